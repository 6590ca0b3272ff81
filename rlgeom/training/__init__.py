"""What the agents' training loops share: the fused Adam (optim), schedules, the numerical guards and
evaluation on whole episodes."""
