import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vtx")
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token to a sequence (ViT's `x_class`, BERT's [CLS]).

    Args:
        initializer: initializer of the token; zeros as in big_vision.

    Call arguments:
        inputs: tensor `(batch, length, width)`.

    Returns:
        A tensor `(batch, length + 1, width)` whose first element is the token.

    Example:
    >>> tuple(ClassToken()(keras.ops.ones((2, 4, 8))).shape)
    (2, 5, 8)
    """

    def __init__(self, initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.class_token = self.add_weight(
            shape=(1, 1, input_shape[-1]), initializer=self.initializer, name="class_token"
        )

    def call(self, inputs):
        token = ops.cast(self.class_token, inputs.dtype)
        token = ops.broadcast_to(token, (ops.shape(inputs)[0], 1, inputs.shape[-1]))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])

    def get_config(self):
        return {
            **super().get_config(),
            "initializer": keras.initializers.serialize(self.initializer),
        }
