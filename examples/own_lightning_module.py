"""Your own LightningModule with shallownet's monitors: a tiny MLP on random data, trained full-batch by GD,
with the top Hessian eigenvalue (SharpnessMonitor), the module's own quantities (DynamicsMonitor), a
checkpoint of the flattest state seen (ModelCheckpoint on curvature/sharpness), and CSV and TensorBoard logs.

    python examples/own_lightning_module.py [OUT_FOLDER] [STEPS]

No shallownet config or registry is involved: the monitors are ordinary Lightning callbacks.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from shallownet.callbacks.dynamics import DynamicsMonitor
from shallownet.callbacks.sharpness import SharpnessMonitor


class TinyMLP(L.LightningModule):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, lr: float = 0.5):
        super().__init__()
        self.x, self.y, self.lr = x, y, lr
        self.net = nn.Sequential(nn.Linear(x.shape[1], 16), nn.Tanh(), nn.Linear(16, 1)).double()

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def loss_fn(self, outputs, targets):  # SharpnessMonitor differentiates this (a mean over the rows)
        return 0.5 * (outputs - targets).square().mean()

    def curvature_data(self):  # ... on this data: the whole training set
        return self.x, self.y

    def quantities(self):  # DynamicsMonitor logs these as dynamics/<name> (0-dim: scalars, 1-dim: histograms)
        with torch.no_grad():
            return {"loss": self.loss_fn(self(self.x), self.y),
                    "weight_norm": sum(p.square().sum() for p in self.parameters()),
                    "first_layer_row_norms": self.net[0].weight.norm(dim=1)}

    def training_step(self, batch, batch_idx):
        loss = self.loss_fn(self(self.x), self.y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # plain GD: the threshold SharpnessMonitor logs is 2 / lr
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):  # one batch per step: the data is held by the module (full batch)
        return [0]


def main(out: Path, steps: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(4, generator=gen, dtype=torch.float64))
    module = TinyMLP(x, y)
    sharpness = SharpnessMonitor(every_n_steps=5)
    flattest = ModelCheckpoint(dirpath=out / "checkpoints", monitor="curvature/sharpness", mode="min",
                               save_top_k=1, every_n_train_steps=5, filename="flattest-{step}")
    trainer = L.Trainer(max_steps=steps, callbacks=[DynamicsMonitor(every_n_steps=1), sharpness, flattest],
                        logger=[CSVLogger(out, name="csv"), TensorBoardLogger(out, name="tensorboard")],
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        accelerator="cpu", devices=1)
    trainer.fit(module)
    steps_measured = [step for step, _ in sharpness.history]
    print(f"sharpness S at steps {steps_measured}: " + ", ".join(f"{s:.4g}" for _, s in sharpness.history))
    print(f"2/lr = {2 / module.lr:g}; flattest checkpoint: {flattest.best_model_path} "
          f"(S = {float(flattest.best_model_score):.4g})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/own_module"),
         int(sys.argv[2]) if len(sys.argv) > 2 else 100)
