"""The benchmark harness of Beamline Warden: ``python -m benchmarks [NAME] [--quick]``.

Every figure is measured side by side with its reference in one run, so the ratio holds on a
noisy machine. See ``benchmarks/README.md``.
"""
