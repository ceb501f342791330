"""CLIPLoss in a 2-process torch.distributed (gloo, CPU) group against one process.

Run as a subprocess by tests/losses/test_clip_loss.py with KERAS_BACKEND=torch. Each
rank projects its half of the batch with the same Dense layers, computes
`CLIPLoss().from_embeddings` (which gathers the other rank's embeddings with the
autograd-aware all_gather) and back-propagates; the weight gradients are then averaged
over the ranks as DistributedDataParallel does. Prints one line, "REPORT " + JSON.
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "torch"
# Keras would import TensorFlow (slowly, in all three processes) if it could; the
# losses do not need it.
sys.modules["tensorflow"] = None
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import numpy as np  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2
GLOBAL_BATCH = 8
LOGIT_SCALE = float(np.log(10.0))


def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((GLOBAL_BATCH, 6)).astype("float32"),
            rng.standard_normal((GLOBAL_BATCH, 5)).astype("float32"))


def loss_and_gradients(images, texts):
    """The loss of this process's batch and the gradients of both Dense kernels."""
    import keras

    from keras_vtx.losses import CLIPLoss

    keras.utils.set_random_seed(0)  # the same initial weights in every process
    image_projection, text_projection = keras.layers.Dense(4), keras.layers.Dense(4)

    def embed(layer, x):
        y = layer(x)
        return y / keras.ops.sqrt(keras.ops.sum(keras.ops.square(y), -1, keepdims=True))

    value = CLIPLoss().from_embeddings(
        embed(image_projection, images), embed(text_projection, texts), LOGIT_SCALE
    )
    value.backward()
    return float(value.detach()), [layer.kernel.value.grad.detach().clone()
                          for layer in (image_projection, text_projection)]


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    images, texts = data()
    part = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
    value, grads = loss_and_gradients(images[part], texts[part])
    for grad in grads:  # what DistributedDataParallel does with the gradients
        dist.all_reduce(grad)
        grad /= WORLD
    values = [None] * WORLD
    dist.all_gather_object(values, value)
    if rank == 0:
        np.savez(os.path.join(out_dir, "ddp.npz"), values=np.array(values),
                 image_kernel=grads[0].numpy(), text_kernel=grads[1].numpy())
    dist.barrier()
    dist.destroy_process_group()
    # torch 2.13's gloo leaves a joinable C++ thread behind: about one exit in four
    # then aborts ("terminate called without an active exception") after all the
    # work is done. Leave without running the C++ static destructors.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        result = np.load(os.path.join(tmp, "ddp.npz"))
        ddp_values = result["values"]
        ddp_grads = [result["image_kernel"], result["text_kernel"]]
    single_value, single_grads = loss_and_gradients(*data())
    print("REPORT " + json.dumps({
        "rank_values": ddp_values.tolist(),
        "single_value": single_value,
        "max_gradient": float(max(g.abs().max() for g in single_grads)),
        "max_gradient_difference": float(max(
            np.max(np.abs(a - b.numpy())) for a, b in zip(ddp_grads, single_grads)
        )),
    }))
