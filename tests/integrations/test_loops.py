"""The optimizers in the training loops people use, with the real packages: Lightning (automatic
optimization, gradient accumulation, clipping, validation and checkpoints at the mean), the
Hugging Face Trainer (a tiny randomly initialised transformer built from a config: no download),
peft LoRA with IVON (ess ≫ N, the IVON-LoRA recipe). With ``draw_ahead=True`` these loops, which
never call ``sampled_params``, train at posterior draws; the callbacks of
:mod:`blr.optim.loops` evaluate and save at the mean."""

from __future__ import annotations

import pytest
import torch

from blr.optim import IVON
from blr.optim.loops import hf_callback, lightning_callback, unwrap

pl = pytest.importorskip("lightning.pytorch")


def _data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, torch.sin(x @ torch.tensor([[1.0], [-0.5], [0.3], [0.2]]))


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _mean(opt):
    return [e["mean"].clone() for e in opt.state_dict()["state"].values()]


# ---------------------------------------------------------------------------- Lightning
class _Module(pl.LightningModule):
    def __init__(self, draw_ahead=True, seen=None):
        super().__init__()
        self.net = _mlp()
        self.draw_ahead = draw_ahead
        self.seen = seen if seen is not None else []

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, _):
        self.seen.append([p.detach().clone() for p in self.net.parameters()])

    def configure_optimizers(self):
        return IVON(self.parameters(), lr=0.05, ess=32, seed=0, draw_ahead=self.draw_ahead)


def _loader(batch=8):
    x, y = _data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def _trainer(tmp_path, **kw):
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
    )  # fmt: skip
    defaults.update(kw)
    return pl.Trainer(**defaults)


def _manual_run(accumulate: int, steps: int, clip: float | None = None):
    """The same training written by hand: micro-batches of 8 at one held draw, each loss
    divided by ``accumulate`` (as Lightning does), gradient clipping before the step."""
    model = _mlp()
    opt = IVON(model.parameters(), lr=0.05, ess=32, seed=0, draw_ahead=True)
    batches = list(_loader())
    for t in range(steps):
        opt.zero_grad()
        for k in range(accumulate):
            x, y = batches[(t * accumulate + k) % len(batches)]
            (torch.nn.functional.mse_loss(model(x), y) / accumulate).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return opt


@pytest.mark.parametrize(("accumulate", "clip"), [(1, None), (2, None), (2, 0.05)])
def test_lightning_trains_at_draws_with_accumulation_and_clipping(tmp_path, accumulate, clip):
    """Lightning's automatic optimization (a closure; with accumulate_grad_batches the first
    micro-batches run outside it) and gradient clipping: the posterior equals the hand-written
    loop at the same held draws (to one rounding of the saved mean). Without draw_ahead the
    micro-batches outside the closure ran at the mean."""
    module = _Module()
    trainer = _trainer(tmp_path, max_steps=4, accumulate_grad_batches=accumulate,
                       gradient_clip_val=clip, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, _loader())
    ours = _mean(unwrap(trainer.optimizers[0]))
    ref = _mean(_manual_run(accumulate, 4, clip))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_lightning_validates_and_checkpoints_at_the_mean(tmp_path):
    """With the callback, validation sees the posterior mean (the weights hold a draw during
    training) and the checkpoint's state_dict is the mean."""
    seen = []
    module = _Module(seen=seen)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = _trainer(tmp_path, max_steps=4, callbacks=[lightning_callback(), ckpt],
                       val_check_interval=2, check_val_every_n_epoch=None)  # fmt: skip
    trainer.fit(module, _loader(), _loader())
    opt = unwrap(trainer.optimizers[0])
    assert seen, "validation ran"
    for a, b in zip(seen[-1], _mean(opt)):  # the last validation: at the final mean
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    saved = torch.load(ckpt.last_model_path, weights_only=False)["state_dict"]
    for a, b in zip(saved.values(), _mean(opt)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    with opt.mean_params():  # outside the callback the weights hold a draw
        mean = [p.detach().clone() for p in module.net.parameters()]
    assert not all(torch.equal(a, p) for a, p in zip(mean, module.net.parameters()))


# ---------------------------------------------------------------------------- Hugging Face
def test_hf_trainer_trains_a_tiny_transformer_and_evaluates_and_saves_at_the_mean(tmp_path):
    """The Hugging Face Trainer (its own loop: backward, clip_grad_norm_, optimizer.step,
    model.zero_grad — never sampled_params) with IVON(draw_ahead=True) on a BERT built from a
    config: training moves the posterior, the weights hold draws between steps, and with the
    callback evaluation and the saved checkpoint (safetensors, the Trainer's default) are the
    posterior mean."""
    transformers = pytest.importorskip("transformers")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 40, (32, 8), generator=g)
    labels = (ids[:, 0] > 20).long()
    data = [{"input_ids": i, "attention_mask": torch.ones(8, dtype=torch.long), "labels": lab}
            for i, lab in zip(ids, labels)]  # fmt: skip
    opt = IVON(model.parameters(), lr=0.05, ess=32, seed=0, draw_ahead=True)
    before = _mean(opt)
    seen = {}

    class Record(transformers.TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, **kw):
            seen["eval"] = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, eval_strategy="steps", eval_steps=4, save_strategy="steps",
        save_steps=4, report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip
    callbacks = [hf_callback(), Record()]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                                   optimizers=(opt, None), callbacks=callbacks)  # fmt: skip
    trainer.train()
    after = _mean(opt)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the posterior moved"
    trained = [p for p in model.parameters() if p.requires_grad]
    assert not all(torch.equal(p, m) for p, m in zip(trained, after)), "weights hold a draw"
    for a, b in zip(seen["eval"], after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    saved = safetensors_torch.load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    state = model.state_dict()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, m in zip(names, after):
        key = name if name in saved else next(k for k in saved if k.endswith(name))
        torch.testing.assert_close(saved[key], m.reshape(state[name].shape), rtol=0, atol=1e-7)


def test_peft_lora_with_ivon_trains_only_the_adapters(tmp_path):
    """peft LoRA + IVON with ess ≫ N (the IVON-LoRA recipe: a prior over the adapters that the
    small fine-tuning set barely moves): only the LoRA parameters are in the optimizer and move;
    the base weights stay; the posterior is over the adapters."""
    peft = pytest.importorskip("peft")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = torch.nn.Linear(4, 16), torch.nn.Linear(16, 1)

        def forward(self, x):
            return self.out(torch.tanh(self.inp(x)))

    torch.manual_seed(0)
    base = Net()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["inp", "out"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = IVON(trainable, lr=0.05, ess=10_000, seed=0, draw_ahead=True)
    x, y = _data()
    before = _mean(opt)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    after = _mean(opt)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    for name, value in model.get_base_model().state_dict().items():
        plain = name.replace("base_layer.", "")
        if "lora_" not in name and plain in frozen:
            assert torch.equal(value, frozen[plain]), name
    assert opt.posterior().mean().numel() == sum(p.numel() for p in trainable)


def test_lightning_resumes_bit_exactly_at_the_held_draw(tmp_path):
    """8 steps straight, against 4 steps (one epoch: Lightning restarts a data loader at an epoch
    boundary), a checkpoint (the model's mean from the callback, the optimizer's state with its
    held draw) and 4 more after Lightning's resume: the same weights (the same held draw), bit
    for bit."""
    module = _Module()
    _trainer(tmp_path / "a", max_steps=8, limit_val_batches=0, enable_checkpointing=False,
             callbacks=[lightning_callback()]).fit(module, _loader())  # fmt: skip
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True,
                                        every_n_train_steps=4)  # fmt: skip
    _trainer(tmp_path / "b", max_steps=4, limit_val_batches=0,
             callbacks=[lightning_callback(), ckpt]).fit(_Module(), _loader())  # fmt: skip
    resumed = _Module()
    trainer = _trainer(tmp_path / "c", max_steps=8, limit_val_batches=0,
                       enable_checkpointing=False, callbacks=[lightning_callback()])  # fmt: skip
    trainer.fit(resumed, _loader(), ckpt_path=ckpt.last_model_path)
    for a, b in zip(module.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
