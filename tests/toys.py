"""Stand-ins for a world's tokenizer, frame model and dynamics in tests of the evaluation and the controls
fit: pixels cut into patches are the latents, so decode(encode(x)) == x exactly."""

from types import SimpleNamespace

import torch
from einops import rearrange
from torch import nn


class ToyTokenizer(nn.Module):
    """uint8 frames of `res` x `res` <-> latents (b, t, (res/p)^2, p*p*3) in [0, 1]."""

    def __init__(self, res: int, p: int):
        super().__init__()
        self.res, self.p = res, p
        self.cfg = SimpleNamespace(resolution=(res, res), latent_dim=p * p * 3, tokens_per_frame=(res // p) ** 2)
        self.decoder = SimpleNamespace(new_cache=list)

    def encode(self, frames):  # uint8 (b, t, H, W, 3) -> (b, t, s, c) in [0, 1]
        return rearrange(frames.float() / 255, "b t (gh p) (gw q) c -> b t (gh gw) (p q c)", p=self.p, q=self.p)

    def decode(self, z):
        x = rearrange(z.float(), "b t (gh gw) (p q c) -> b t (gh p) (gw q) c", gh=self.res // self.p, p=self.p,
                      q=self.p, c=3)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)

    def decode_step(self, z, caches, start, window):
        return self.decode(z)


class ToyFrame:
    """The frame model's reading and writing: latents in, latents out (as the forcing model)."""

    def check_tokenizer(self, tokenizer):
        pass

    def inputs_from_video(self, tokenizer, video):
        z = tokenizer.encode(video).float()
        return z, z

    def to_latents(self, tokenizer, out):
        return out


class ToyDynamics(nn.Module):
    """What a World asks of a dynamics model, with the frames kept as pixels: `observe` holds the
    last context frame in the state; subclasses define `generate_frame` (latents of the next)."""

    def __init__(self, tok: ToyTokenizer, num_actions: int, action_source: str = "lam"):
        super().__init__()
        self.tok = tok
        self.cfg = SimpleNamespace(num_actions=num_actions, action_source=action_source, context_window=8,
                                   frame_model="forcing", latent_dim=tok.cfg.latent_dim,
                                   tokens_per_frame=tok.cfg.tokens_per_frame)
        self.frame = ToyFrame()

    def frame_actions(self, trans, b, t, device):
        return None

    def new_state(self):
        return {}

    def observe(self, state, z, actions, context_level=None, generator=None):
        state["frame"] = self.tok.decode(z[:, -1:])[:, 0]
