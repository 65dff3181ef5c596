"""distill: a Parallel-WaveNet teacher-student pipeline (MAF teacher, IAF student)."""

__version__ = "0.1.0"
