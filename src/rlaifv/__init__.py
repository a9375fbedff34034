"""rlaifv: RLAIF-V, trustworthy VLMs from open-source AI feedback."""

__version__ = "0.1.0"
