"""How much of the sound do a teacher's features carry? A linear probe from one layer to the log-mel.

    python bench/teacher_probe.py TEACHER LAYER --corpus runs/tiny/corpus [--train 120] [--test 40]

TEACHER is an ssl run's export folder (or any Hugging Face-layout WavLM); LAYER the number of transformer
layers kept (the codec's `teacher_layers`). Ridge regression (lambda 1) from the standardised features
to the decoder's log-mel (1024-point FFT, 320-sample hop, 80 bands) is fitted on the first `--train`
utterances of the corpus' train.jsonl and scored on the first `--test` of its test.jsonl (held-out
voices): mean absolute error, the same for the mean spectrum, and R^2. The codec distils exactly these
features and its decoder renders them, so a low R^2 predicts a codec that cannot be intelligible.
"""

import argparse
import json
from pathlib import Path

import torch

from wavslm.audio import load_audio
from wavslm.train.codec.teacher import load_teacher
from wavslm.train.losses import mel_spectrogram


def pairs(teacher, manifest: Path, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][:count]
    feats, mels = [], []
    for row in rows:
        path = Path(row["path"]) if Path(row["path"]).is_absolute() else manifest.parent / row["path"]
        sig, _ = load_audio(path, 16000, mono=True)
        with torch.inference_mode():
            x, _ = teacher(sig)
            mel = mel_spectrogram(sig, 16000, n_fft=1024, hop=320, n_mels=80)[0].T
        n = min(x.shape[1], len(mel))
        feats.append(x[0, :n])
        mels.append(mel[:n])
    return torch.cat(feats), torch.cat(mels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("layer", type=int)
    parser.add_argument("--corpus", type=Path, required=True, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--test", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    teacher = load_teacher(args.teacher, args.layer)
    x_train, y_train = pairs(teacher, args.corpus / "train.jsonl", args.train)
    x_test, y_test = pairs(teacher, args.corpus / "test.jsonl", args.test)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5

    def design(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - mean) / std, torch.ones(len(x), 1)], 1)

    a = design(x_train)
    weights = torch.linalg.solve(a.T @ a + torch.eye(a.shape[1]), a.T @ y_train)
    pred = design(x_test) @ weights
    l1 = (pred - y_test).abs().mean().item()
    flat = (y_train.mean(0) - y_test).abs().mean().item()
    r2 = 1 - ((pred - y_test) ** 2).sum().item() / ((y_test - y_test.mean(0)) ** 2).sum().item()
    print(f"{args.teacher}, {args.layer} layers: probe log-mel L1 {l1:.3f} (mean spectrum {flat:.3f}), R^2 {r2:.3f}")


if __name__ == "__main__":
    main()
