"""Progress bars for long work (tqdm), quiet when asked."""

from __future__ import annotations

from tqdm import tqdm  # the text bar everywhere (tqdm.auto wants ipywidgets in a notebook)


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr; `bar.set_postfix(loss=..., psnr=...)` shows the metric that matters."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=True)


class LazyBar:
    """A `progress(done, total)` callback that opens its bar on the first call.

    Readers validate everything before the first call, so an input error is never
    printed on the same line as a half-drawn bar.
    """

    def __init__(self, desc: str, enabled: bool = True, unit: str = "it"):
        self.desc, self.enabled, self.unit = desc, enabled, unit
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(total, self.desc, self.enabled, self.unit)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
