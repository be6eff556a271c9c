import time

import torch

from turbonerf.engine.loop import StepOutput
from turbonerf.viewer.live import LiveViewer


class FakeViewer:
    """Stands in for a driven ViewerServer: rendering always has work and takes what it is given."""

    def __init__(self):
        self.rendered = 0.0
        self.texts = []
        self.invalidated = 0

    def render_for(self, seconds):
        time.sleep(seconds)
        self.rendered += seconds
        return seconds

    def set_training_text(self, text):
        self.texts.append(text)

    def refresh_all(self):
        self.invalidated += 1


def test_rendering_takes_a_bounded_share_of_the_time():
    viewer = FakeViewer()
    live = LiveViewer(viewer, share=0.1, refresh_seconds=0.05)
    t0 = time.perf_counter()
    out = StepOutput(torch.tensor(0.01), stats={"mse": 0.01})
    for step in range(40):
        time.sleep(0.01)  # a training step
        live.after_step(step, out)
    wall = time.perf_counter() - t0
    assert 0.05 < viewer.rendered / wall <= 0.11
    assert live.render_share() <= 0.11
    assert "**PSNR** 20.00 dB" in viewer.texts[0] and "**step** 1" in viewer.texts[0]
    assert viewer.invalidated >= 2  # the model changed: still cameras get new frames
