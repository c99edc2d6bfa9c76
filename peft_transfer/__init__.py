"""peft_transfer: move a PEFT adapter from one base LLM to another without its training data."""
