"""Plain nn.Modules and pure functions: fields, encoders, audio2motion, super-resolution, losses, rendering.
Nothing here imports Lightning or sees a config object: typed keyword arguments only."""
