"""An independent oracle in the ORIGINAL Clay module layout, written from the architecture spec.

It uses torch's own ``nn.TransformerEncoder`` for the weight generator and ``nn.Sequential`` blocks, so its
``state_dict`` has exactly the original key names (``model.encoder.transformer.layers.0.1.net.1.weight``...).
``test_parity.py`` first proves it reproduces the vectors made by the original code, then uses it to check
the converter and clay_hf at sizes the fixture does not cover.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _sincos_1d(waves, dim):
    omega = 1.0 / (10000 ** (torch.arange(dim // 2) / (dim // 2 - 1)))
    s = waves[:, None] * omega[None, :]
    return torch.cat((s.sin(), s.cos()), dim=1)


def _sincos_2d(h, w, dim, gsd):
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = torch.arange(dim // 4) / (dim // 4 - 1)
    omega = 1.0 / (10000 ** (2 * omega / dim)) * gsd
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)


class _FC(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.l1, self.l2 = nn.Linear(n, n), nn.Linear(n, n)

    def forward(self, x):
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class _Waves(nn.Module):
    def __init__(self, out_dim, bias_dim):
        super().__init__()
        layer = nn.TransformerEncoderLayer(128, 4, activation="gelu", dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(128, out_dim)
        self.fc_bias = nn.Linear(128, bias_dim) if bias_dim else None
        self.weight_tokens = nn.Parameter(torch.randn(128, 128) * 0.02)
        self.bias_token = nn.Parameter(torch.randn(1, 128) * 0.02)

    def forward(self, x):
        x = torch.cat([self.weight_tokens, x, self.bias_token], dim=0)
        out = self.encoder(x)
        w = self.fc_weight(out[128:-1] + x[128:-1])
        return w, (self.fc_bias(out[-1]) if self.fc_bias is not None else None)


class _Dynamic(nn.Module):
    def __init__(self, patch, dim, decoder):
        super().__init__()
        self.patch, self.dim, self.decoder = patch, dim, decoder
        self.weight_generator = _Waves(patch * patch * dim, None if decoder else dim)
        self.fclayer = _FC(128)

    def forward(self, x, waves):
        w, b = self.weight_generator(self.fclayer(_sincos_1d(waves, 128)))
        c, p = waves.shape[0], self.patch
        if self.decoder:
            return F.linear(x, w.reshape(c * p * p, self.dim) * 0.02)
        kernel = w.reshape(c, self.dim, p, p).permute(1, 0, 2, 3) * 0.02
        return F.conv2d(x, kernel, b, stride=p).flatten(2).transpose(1, 2)


class _Attn(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(self.norm(x)).chunk(3, -1))
        att = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
        return self.to_out((att @ v).transpose(1, 2).reshape(b, n, -1))


class _FF(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        return self.net(x)


class _Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_ratio):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_Attn(dim, heads, dim_head), _FF(dim, int(dim * mlp_ratio))]) for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


def _encode(tokens, h, w, dim, gsd, time, latlon):
    b, n, _ = tokens.shape
    pos = _sincos_2d(h, w, dim - 8, gsd).expand(b, n, dim - 8)
    meta = torch.hstack((time, latlon))[:, None].expand(b, n, 8)
    return tokens + torch.cat((pos, meta), dim=-1)


class _Encoder(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.hp = hp
        self.cls_token = nn.Parameter(torch.randn(1, 1, hp["dim"]) * 0.02)
        self.patch_embedding = _Dynamic(hp["patch_size"], hp["dim"], decoder=False)
        self.transformer = _Transformer(hp["dim"], hp["depth"], hp["heads"], hp["dim_head"], hp["mlp_ratio"])

    def forward(self, pixels, time, latlon, gsd, waves, mask_ratio):
        b, _, height, width = pixels.shape
        p = self.hp["patch_size"]
        x = _encode(self.patch_embedding(pixels, waves), height // p, width // p, self.hp["dim"], gsd, time, latlon)
        n_mask = int(mask_ratio * x.shape[1])
        order = torch.arange(x.shape[1]).expand(b, -1)  # identity order: the first patches are masked
        masked, kept = order[:, :n_mask], order[:, n_mask:]
        matrix = torch.zeros(b, x.shape[1])
        matrix[:, :n_mask] = 1
        x = torch.cat((self.cls_token.expand(b, -1, -1), x[torch.arange(b)[:, None], kept]), dim=1)
        return self.transformer(x), kept, masked, matrix


class _Decoder(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.hp = hp
        d = hp["decoder_dim"]
        self.enc_to_dec = nn.Linear(hp["dim"], d) if hp["dim"] != d else nn.Identity()
        self.mask_patch = nn.Parameter(torch.randn(d))
        self.transformer = _Transformer(
            d, hp["decoder_depth"], hp["decoder_heads"], hp["decoder_dim_head"], hp["decoder_mlp_ratio"]
        )
        self.embed_to_pixels = _Dynamic(hp["patch_size"], d, decoder=True)

    def forward(self, enc, kept, masked, matrix, time, latlon, gsd, waves, hw):
        x = self.enc_to_dec(enc)
        b, n = matrix.shape
        d = x.shape[-1]
        grid = torch.zeros(b, n, d)
        rows = torch.arange(b)[:, None]
        grid[rows, kept] = x[:, 1:]
        grid[rows, masked] = self.mask_patch
        grid = _encode(grid, hw[0], hw[1], d, gsd, time, latlon)
        out = self.transformer(torch.cat((x[:, :1], grid), dim=1))
        return self.embed_to_pixels(out, waves)[:, 1:]


class _ClayMAE(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.encoder = _Encoder(hp)
        self.decoder = _Decoder(hp)
        self.proj = nn.Linear(hp["dim"], hp["teacher_dim"])


class OriginalLayoutClay(nn.Module):
    """``state_dict()`` keys are the original Lightning ones (``model.encoder.*`` ...)."""

    def __init__(self, hp: dict):
        super().__init__()
        self.hp = hp
        self.model = _ClayMAE(hp)

    @torch.no_grad()
    def run(self, pixels, waves, gsd, time, latlon, mask_ratio):
        """Encoder (with the identity masking order), decoder pixels and projected cls."""
        p = self.hp["patch_size"]
        enc, kept, masked, matrix = self.model.encoder(pixels, time, latlon, gsd, waves, mask_ratio)
        hw = (pixels.shape[2] // p, pixels.shape[3] // p)
        pix = self.model.decoder(enc, kept, masked, matrix, time, latlon, gsd, waves, hw)
        return {"encoder": enc, "mask": matrix, "pixels": pix, "proj": self.model.proj(enc[:, 0])}
