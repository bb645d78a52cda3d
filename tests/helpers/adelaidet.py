"""AdelaiDet, written out independently of the package: the reference key lists shipped in
tests/data/keys, where each reference key lands in our model (`our_name`, token by token, not
the module's regex table), checkpoint files in the forms the reference saves (`save`), and the
reference's forward pass on a checkpoint's own names (`ReferenceForward`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d

from helpers.paths import KEYS_DIR

# detectron2's cfg.MODEL.PIXEL_MEAN for MSRA weights (BGR, 0-255), written out here.
DETECTRON2_PIXEL_MEAN = [103.53, 116.28, 123.675]

Entry = tuple[str, list[int], str]


def key_list(name: str) -> list[Entry] | None:
    """The (key, shape, dtype) list of tests/data/keys/<name>.json, None when not shipped."""
    path = KEYS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    return [(k, list(s), t) for k, s, t in json.loads(path.read_text())]


def our_name(key: str) -> str:
    """Where an AdelaiDet key lands in our model, written out token by token."""
    parts = key.split(".")
    if parts[0] == "module":
        parts = parts[1:]
    if parts[:2] == ["backbone", "bottom_up"]:
        rest = parts[2:]
        if rest[0] == "stem":  # stem.conv1.weight | stem.conv1.norm.<f>
            return "body." + ("conv1." + rest[2] if rest[2] == "weight" else "bn1." + rest[3])
        stage, block, module = int(rest[0][3:]), rest[1], rest[2]
        prefix = f"body.layer{stage - 1}.{block}"
        if module == "shortcut":
            sub = "downsample.1." + rest[4] if rest[3] == "norm" else "downsample.0." + rest[3]
            return f"{prefix}.{sub}"
        if rest[3] == "norm":
            return f"{prefix}.bn{module[-1]}.{rest[4]}"
        return f"{prefix}.{module}.{rest[3]}"  # conv1/2/3.weight, conv2_offset.weight/bias
    if parts[0] == "backbone":
        return "fpn." + ".".join(parts[1:])
    if parts[:2] == ["proposal_generator", "fcos_head"]:
        rest = ["ctrness" if p == "centerness" else p for p in parts[2:]]
        return "head." + ".".join(rest)
    return ".".join(parts)


def save(state: dict, path: Path, *, legacy: bool = False, **wrap) -> Path:
    """`state` saved as the reference does: bare, or under "model" next to `wrap`; `legacy`:
    the pre-zipfile format of 2020 checkpoints."""
    obj = {"model": state, **wrap} if wrap else state
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


class ReferenceForward:
    """detectron2 / AdelaiDet inference maths (docs/reference.md §1.2-1.7) on an AdelaiDet
    state dict: FrozenBN as x * w / sqrt(rv + eps) + (b - rm * w / sqrt(rv + eps)), stride on
    the 1x1 conv, DCNv2 offset = chunks 0-1 and mask = sigmoid(chunk 2), FPN with nearest x2
    (scale_factor) top-down, P6 from P5 and P7 from ReLU(P6), towers conv -> norm -> ReLU with
    GroupNorm(32) or one BN per level, ReLU regression, centerness and top layer on the bbox
    tower, ProtoNet summing P3-P5 at P3 bilinearly."""

    def __init__(self, sd: dict[str, Tensor]) -> None:
        self.sd = {k: v.float() for k, v in sd.items()}

    def norm(self, x: Tensor, prefix: str) -> Tensor:
        sd = self.sd
        w, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
        scale = w * (sd[f"{prefix}.running_var"] + 1e-5).rsqrt()
        shift = b - sd[f"{prefix}.running_mean"] * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def conv(self, x: Tensor, prefix: str, stride: int = 1, padding: int = 0) -> Tensor:
        return F.conv2d(x, self.sd[f"{prefix}.weight"], self.sd.get(f"{prefix}.bias"), stride, padding)  # fmt: skip

    def resnet(self, x: Tensor) -> list[Tensor]:
        sd, base = self.sd, "backbone.bottom_up"
        x = F.relu(self.norm(self.conv(x, f"{base}.stem.conv1", 2, 3), f"{base}.stem.conv1.norm"))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outs = []
        for stage in (2, 3, 4, 5):
            b = 0
            while f"{base}.res{stage}.{b}.conv1.weight" in sd:
                p = f"{base}.res{stage}.{b}"
                # STRIDE_IN_1X1: block 0 of res3-res5 strides its 1x1 conv1; the 3x3 has 1.
                stride = 2 if (b == 0 and stage > 2) else 1
                shortcut = x
                if f"{p}.shortcut.weight" in sd:
                    shortcut = self.conv(x, f"{p}.shortcut", stride)
                    shortcut = self.norm(shortcut, f"{p}.shortcut.norm")
                y = F.relu(self.norm(self.conv(x, f"{p}.conv1", stride), f"{p}.conv1.norm"))
                if f"{p}.conv2_offset.weight" in sd:
                    offset_mask = self.conv(y, f"{p}.conv2_offset", 1, 1)
                    offset_x, offset_y, mask = torch.chunk(offset_mask, 3, dim=1)
                    offset = torch.cat((offset_x, offset_y), dim=1)
                    weight = sd[f"{p}.conv2.weight"]
                    y = deform_conv2d(y, offset, weight, padding=1, mask=mask.sigmoid())
                else:
                    y = self.conv(y, f"{p}.conv2", 1, 1)
                y = F.relu(self.norm(y, f"{p}.conv2.norm"))
                y = self.norm(self.conv(y, f"{p}.conv3"), f"{p}.conv3.norm")
                x = F.relu(y + shortcut)
                b += 1
            if stage >= 3:
                outs.append(x)
        return outs

    def fpn(self, c: list[Tensor]) -> list[Tensor]:
        prev = self.conv(c[2], "backbone.fpn_lateral5")
        outs = [self.conv(prev, "backbone.fpn_output5", 1, 1)]
        for level, feature in ((4, c[1]), (3, c[0])):
            prev = self.conv(feature, f"backbone.fpn_lateral{level}") + F.interpolate(
                prev, scale_factor=2.0, mode="nearest"
            )
            outs.insert(0, self.conv(prev, f"backbone.fpn_output{level}", 1, 1))
        if "backbone.top_block.p6.weight" in self.sd:
            p6 = self.conv(outs[-1], "backbone.top_block.p6", 2, 1)
            outs.append(p6)
            if "backbone.top_block.p7.weight" in self.sd:
                outs.append(self.conv(F.relu(p6), "backbone.top_block.p7", 2, 1))
        return outs

    def tower(self, x: Tensor, name: str, level: int) -> Tensor:
        p = f"proposal_generator.fcos_head.{name}"
        i = 0
        while f"{p}.{i}.weight" in self.sd:
            x = self.conv(x, f"{p}.{i}", 1, 1)
            if f"{p}.{i + 1}.weight" in self.sd:  # GroupNorm shared by all levels
                w, b = self.sd[f"{p}.{i + 1}.weight"], self.sd[f"{p}.{i + 1}.bias"]
                x = F.group_norm(x, 32, w, b, eps=1e-5)
            else:  # BN of this level (ModuleListDial: the l-th call uses the l-th BN)
                x = self.norm(x, f"{p}.{i + 1}.{level}")
            x = F.relu(x)
            i += 3
        return x

    def head(self, p: list[Tensor]) -> dict[str, list[Tensor]]:
        h = "proposal_generator.fcos_head"
        out: dict[str, list[Tensor]] = {"cls": [], "reg": [], "ctr": [], "top": []}
        for level, feature in enumerate(p):
            x = self.tower(feature, "share_tower", level)
            cls_t, box_t = self.tower(x, "cls_tower", level), self.tower(x, "bbox_tower", level)
            out["cls"].append(self.conv(cls_t, f"{h}.cls_logits", 1, 1))
            out["reg"].append(F.relu(self.conv(box_t, f"{h}.bbox_pred", 1, 1)))
            out["ctr"].append(self.conv(box_t, f"{h}.ctrness", 1, 1))
            out["top"].append(self.conv(box_t, "top_layer", 1, 1))
        return out

    def block(self, x: Tensor, prefix: str) -> Tensor:
        return F.relu(self.norm(self.conv(x, f"{prefix}.0", 1, 1), f"{prefix}.1"))

    def bases(self, p: list[Tensor]) -> Tensor:
        x = self.block(p[0], "basis_module.refine.0")
        for i in (1, 2):
            y = self.block(p[i], f"basis_module.refine.{i}")
            x = x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        n = 0
        while f"basis_module.tower.{n}.0.weight" in self.sd:
            n += 1
        for i in range(n):
            x = self.block(x, f"basis_module.tower.{i}")
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.block(x, f"basis_module.tower.{n + 1}")
        return self.conv(x, f"basis_module.tower.{n + 2}")

    def __call__(self, images_rgb01: Tensor) -> dict[str, Tensor | list[Tensor]]:
        # detectron2: BGR 0-255, (x - mean) / std with std 1; padding (none here) after that.
        mean = torch.tensor(DETECTRON2_PIXEL_MEAN).view(1, 3, 1, 1)
        x = images_rgb01.flip(1) * 255.0 - mean
        p = self.fpn(self.resnet(x))
        out: dict[str, Tensor | list[Tensor]] = dict(self.head(p))
        out["bases"] = self.bases(p)
        return out
