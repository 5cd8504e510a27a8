"""Fine-tuning: the loss, the optimizer and the (sharded) train step."""
