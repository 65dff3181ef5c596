"""distill: a Parallel-WaveNet teacher-student pipeline (MAF teacher, IAF student)."""

__version__ = "0.1.0"

__all__ = ["Synthesizer", "__version__"]


def __getattr__(name: str):
    # lazy, so `import distill` (and `distill --help`) does not pay for importing torch
    if name == "Synthesizer":
        from distill.inference import Synthesizer

        return Synthesizer
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
