"""Class-conditional pixel-space DDPM: network, noise schedule, teacher training, samplers."""
