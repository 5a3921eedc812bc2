"""Lightning callbacks that log the paper's quantities to TensorBoard; usable in any LightningModule."""
