"""Reading weight files safely: `weights_only` unpickling, plain state dicts, clear key/shape errors."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import MimprobeError


def require_file(path: str | Path, source: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MimprobeError(
            f"{source}: weights file {path} does not exist. Set `weights:` of this backbone in the "
            "config (backbones.<name>.weights) to an existing local file."
        )
    return path


def safe_load(path: str | Path, source: str) -> dict:
    """torch.load with weights_only=True: a file that carries code (custom classes) is refused, and
    any other failure (a text file, a truncated download) is one line naming the file."""
    path = require_file(path, source)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MimprobeError(load_failure(path, source, err)) from None


def load_failure(path, source: str, err: BaseException) -> str:
    """One line for a weights file that did not load: refused code, or not a checkpoint at all."""
    chain = " ".join(str(e) for e in (err, err.__cause__, err.__context__) if e is not None)  # timm re-raises
    refused = re.search(r"GLOBAL (\S+)", chain) or re.search(r"Unsupported globals: ([\w.]+\w)", chain)
    if refused:
        return (f"{source}: {path} is refused: it would call {refused.group(1)} when unpickled (not a plain "
                "tensor checkpoint). Re-save it as a plain state dict: torch.save(model.state_dict(), path).")
    # torch's weights-only message opens with a paragraph of advice; the reason is on a later line
    reason = re.search(r"Unsupported [^\n]*", str(err))
    text = " ".join((reason.group(0) if reason else str(err)).split())
    detail = f"{type(err).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}" if text else type(err).__name__
    return (f"{source}: {path} did not load as this model's weights ({detail}). Check that `weights:` of this "
            "backbone (backbones.<name>.weights) names a checkpoint of this model, completely downloaded.")


def plain_state_dict(checkpoint, path, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint that is a state dict or a dict holding one under `state_dict`."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()
    ):
        raise MimprobeError(
            f"{source}: {path} is not a plain state dict (expected a dict of tensors, or a dict with "
            "a 'state_dict' entry holding one)."
        )
    return checkpoint


def check_keys_and_shapes(state_dict: dict, expected: dict, path, source: str) -> None:
    """Fail naming every missing/unexpected key and every shape mismatch, before load_state_dict."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(set(state_dict) & set(expected))
        if state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(_few(missing))}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(_few(unexpected))}")
    if wrong:
        problems.append(f"wrong shapes: {', '.join(_few(wrong))}")
    if problems:
        raise MimprobeError(
            f"{source}: {path} does not fit this architecture: {'; '.join(problems)}. "
            "Check that the weights file belongs to this model entry."
        )


def _few(items: list[str], limit: int = 8) -> list[str]:
    return items if len(items) <= limit else [*items[:limit], f"... ({len(items) - limit} more)"]


def download_to_hub_cache(url: str, source: str) -> Path:
    """Fetch `url` into torch.hub's checkpoint cache once (like load_state_dict_from_url) and return the path."""
    from urllib.error import URLError

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / Path(url).name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except (URLError, OSError, RuntimeError) as err:
        raise MimprobeError(
            f"{source}: could not download the weights from {url} ({err}). Without internet, download the "
            "file elsewhere and set `weights:` of this backbone in the config (backbones.<name>.weights) "
            "to the local file."
        ) from None
    return target
