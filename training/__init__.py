"""Training: the LoRA trainer (python -m training) and the job runner."""
