"""The side-by-side benchmark suite behind `benchmarks/run_benchmarks.py`.

cases.py      what is measured: configurations, batches, inputs (published and tiny sizes)
flops.py      FLOP counts (matmuls and convolutions of the traced forward pass), device peaks
keras_impl.py keras_vtx on the active Keras backend: compiled train step, inference, sampling
reference_impl.py  transformers (torch.compile) and timm, same configuration, batch, precision
timing.py     warm-up, medians, peak memory, versions and device names
report.py     the Markdown and JSON tables
"""
