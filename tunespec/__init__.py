"""tunespec: a declarative dataset-and-experiment spec compiler for LLM fine-tuning."""

__version__ = "0.1.0"
