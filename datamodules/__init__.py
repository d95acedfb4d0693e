"""LightningDataModules and preprocessing stages (video -> binarized dataset). CPU tensors only."""
