"""One LightningModule per training stage: wiring, loss weighting, logging. No math here."""
