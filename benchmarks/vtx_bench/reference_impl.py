"""The reference implementations, same configuration, batch and precision as keras_vtx.

`transformers` (PyTorch) for all four families and timm's VisionTransformer for ViT. Training
steps are forward + loss + backward + optimizer step with the same optimizer family as
keras_vtx's `compile()` defaults (AdamW; DETR's two learning rates and clipping at 0.1); the
model is wrapped in `torch.compile` when `compile_model` is set (the default on a GPU), and
bfloat16 runs under `torch.autocast` (the usual PyTorch mixed precision: float32 weights,
bfloat16 matmuls). Image GPT sampling is transformers' `generate()` with its key/value cache,
eager (its dynamic cache does not go through torch.compile).
"""

import torch

from vtx_bench import cases as cases_lib
from vtx_bench import timing

RESNET_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def available(implementation):
    try:
        __import__(implementation)
        return True
    except ImportError:
        return False


def _vit(case, config, implementation):
    b = config["backbone"]
    if implementation == "timm":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=b["image_size"], patch_size=b["patch_size"],
                                 embed_dim=b["hidden_dim"], depth=b["num_layers"],
                                 num_heads=b["num_heads"], mlp_ratio=b["mlp_dim"] / b["hidden_dim"],
                                 num_classes=config["num_classes"])
    import transformers

    hf = transformers.ViTConfig(
        hidden_size=b["hidden_dim"], num_hidden_layers=b["num_layers"],
        num_attention_heads=b["num_heads"], intermediate_size=b["mlp_dim"],
        image_size=b["image_size"], patch_size=b["patch_size"], hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=1e-6, num_labels=config["num_classes"],
    )
    return transformers.ViTForImageClassification(hf)


def _clip(config):
    import transformers

    image, text = config["image_encoder"], config["text_encoder"]
    hf = transformers.CLIPConfig(
        text_config=dict(vocab_size=text["vocabulary_size"], hidden_size=text["hidden_dim"],
                         intermediate_size=text["mlp_dim"], num_hidden_layers=text["num_layers"],
                         num_attention_heads=text["num_heads"],
                         max_position_embeddings=text["context_length"],
                         hidden_act="quick_gelu", eos_token_id=text["end_token_id"],
                         bos_token_id=text["end_token_id"] - 1),
        vision_config=dict(hidden_size=image["hidden_dim"], intermediate_size=image["mlp_dim"],
                           num_hidden_layers=image["num_layers"],
                           num_attention_heads=image["num_heads"],
                           image_size=image["image_size"], patch_size=image["patch_size"],
                           hidden_act="quick_gelu"),
        projection_dim=config["projection_dim"],
    )
    return transformers.CLIPModel(hf)


def _detr(config):
    import transformers

    b = config["backbone"]
    if "depth" in b:
        resnet = dict(depths=RESNET_DEPTHS[b["depth"]], hidden_sizes=[256, 512, 1024, 2048],
                      embedding_size=64)
    else:
        resnet = dict(depths=list(b["blocks_per_stage"]),
                      hidden_sizes=[4 * f for f in b["stage_filters"]],
                      embedding_size=b["stem_filters"])
    hf = transformers.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        backbone_config=transformers.ResNetConfig(
            out_features=["stage4"], layer_type="bottleneck", downsample_in_bottleneck=False,
            **resnet),
        num_labels=config["num_classes"], num_queries=config["num_queries"],
        d_model=config["hidden_dim"], encoder_layers=config["num_encoder_layers"],
        decoder_layers=config["num_decoder_layers"],
        encoder_attention_heads=config["num_heads"], decoder_attention_heads=config["num_heads"],
        encoder_ffn_dim=config["mlp_dim"], decoder_ffn_dim=config["mlp_dim"],
        dropout=config.get("dropout", 0.1), attention_dropout=config.get("attention_dropout", 0.1),
        auxiliary_loss=config.get("aux_loss", True),
    )
    return transformers.DetrForObjectDetection(hf)


def _igpt(config):
    import transformers

    b = config["backbone"]
    hf = transformers.ImageGPTConfig(
        vocab_size=b["vocabulary_size"], n_positions=b["sequence_length"], n_embd=b["hidden_dim"],
        n_layer=b["num_layers"], n_head=b["num_heads"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5,
    )
    return transformers.ImageGPTForCausalImageModeling(hf)


def build(case, config, implementation):
    if case.family == "vit":
        return _vit(case, config, implementation)
    return {"clip": _clip, "detr": _detr, "igpt": _igpt}[case.family](config)


def _inputs(case, config, device):
    x, y = cases_lib.make_inputs(case, config)

    def t(a, dtype=None):
        return torch.as_tensor(a, dtype=dtype, device=device)

    if case.family == "vit":
        pixels = t(x.transpose(0, 3, 1, 2) / 127.5 - 1.0, torch.float32)
        return {"pixel_values": pixels}, t(y, torch.long)
    if case.family == "clip":
        pixels = t(x["images"].transpose(0, 3, 1, 2) / 127.5 - 1.0, torch.float32)
        return {"pixel_values": pixels, "input_ids": t(x["token_ids"], torch.long),
                "return_loss": True}, None
    if case.family == "detr":
        pixels = t(x["images"].transpose(0, 3, 1, 2), torch.float32)
        labels = []
        for boxes, classes in zip(y["boxes"], y["labels"]):
            keep = classes >= 0
            labels.append({"class_labels": t(classes[keep], torch.long),
                           "boxes": t(boxes[keep], torch.float32)})
        return {"pixel_values": pixels, "pixel_mask": t(x["pixel_mask"], torch.long),
                "labels": labels}, None
    # Image GPT: transformers' input starts with the start-of-sequence id (the last one).
    sos = config["backbone"]["vocabulary_size"] - 1
    ids = torch.cat([torch.full((case.batch, 1), sos), torch.as_tensor(x[:, :-1])], 1)
    ids = ids.to(device=device, dtype=torch.long)
    return {"input_ids": ids, "labels": ids}, None


def _logits(out):
    return out if torch.is_tensor(out) else out.logits


def _optimizer(case, config, model):
    if case.family == "detr":
        backbone = [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
        rest = [p for n, p in model.named_parameters()
                if "backbone" not in n and p.requires_grad]
        return torch.optim.AdamW([{"params": rest, "lr": 1e-4},
                                  {"params": backbone, "lr": 1e-5}], weight_decay=1e-4), 0.1
    decay = {"vit": 0.05, "clip": 0.2, "igpt": 0.0}[case.family]
    clip = {"vit": 1.0, "clip": None, "igpt": None}[case.family]
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=decay), clip


def run_case(case, precision, implementation, steps, warmup, repeats, compile_model,
             profile_to=None, profile_steps=3):
    device, _ = timing.torch_device()
    torch.manual_seed(0)
    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default on GPUs
    config = cases_lib.resolved_config(case)
    model = build(case, config, implementation).to(device)
    record = {"parameters": sum(p.numel() for p in model.parameters()),
              "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
              "compiled": bool(compile_model and case.mode != "sample")}
    kwargs, labels = _inputs(case, config, device)
    if implementation == "timm":  # timm's forward takes the images positionally
        kwargs = {"x": kwargs["pixel_values"]}
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=precision == "bfloat16")
    timing.torch_reset_peak()
    if case.mode == "sample":
        model.eval()
        ids = kwargs["input_ids"][:, :1]
        length = config["backbone"]["sequence_length"]

        def step():
            with torch.no_grad(), autocast:
                return model.generate(input_ids=ids, max_length=length + 1, do_sample=True,
                                      top_k=0, use_cache=True, pad_token_id=0)

        first, median, times = timing.time_steps(step, timing.torch_sync, 1, 0, repeats)
    else:
        net = torch.compile(model) if record["compiled"] else model
        if case.mode == "infer":
            model.eval()

            def step():
                with torch.no_grad(), autocast:
                    return _logits(net(**kwargs))
        else:
            model.train()
            optimizer, clip = _optimizer(case, config, model)
            params = [p for group in optimizer.param_groups for p in group["params"]]

            def step():
                with autocast:
                    out = net(**kwargs)
                    if labels is None:
                        loss = out.loss
                    else:
                        loss = torch.nn.functional.cross_entropy(_logits(out), labels)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss

        try:
            first, median, times = timing.time_steps(step, timing.torch_sync, steps, warmup,
                                                     repeats)
        except Exception as error:
            if not record["compiled"]:
                raise
            # torch.compile can fail where eager works (no compiler, an unsupported op):
            # measure eagerly and say so rather than lose the reference.
            record.update(compiled=False, compile_error=f"{type(error).__name__}: {error}"[:300])
            net = model
            first, median, times = timing.time_steps(step, timing.torch_sync, steps, warmup,
                                                     repeats)
        if profile_to:
            from vtx_bench import profile

            record["profile"] = profile.capture_or_error(
                step, timing.torch_sync, profile_steps, profile_to, "torch")
    items = cases_lib.items_per_step(case, config)
    record.update(first_call_s=first, step_s=median, step_times_s=times,
                  throughput=items / median, peak_bytes=timing.torch_peak_bytes())
    return record
