"""The measurement code behind the benchmark tools (``tools/benchmark_*.py``,
``tools/detector_costs.py``, ``tools/count_launches.py``): what each one builds, runs and times,
and the tables and charts it makes of the results, so that the tools are thin commands over it.
Importing this package needs torch alone; the modules that measure mmdet detectors or ONNX
Runtime import those where they use them."""
