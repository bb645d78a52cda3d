"""`build(cfg)`, exported as `blendmask.build`: the one place that reads a Config and constructs
the three modules. It never changes the Config it is given. The `model.pt` file format lives in
`checkpoint_io.py`, which imports this module (never the reverse); the ImageNet weight readers
in `interop/` are imported from here, and never import it."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from blendmask.config import Config, ConfigError
from blendmask.interop.torchvision_weights import (
    check_weight_conventions,
    load_backbone_weights,
    read_backbone_weights,
)
from blendmask.modeling.backbone import build_body
from blendmask.modeling.basis_module import DeepLabBasis, ProtoNet
from blendmask.modeling.blendmask import BlendMask
from blendmask.modeling.efficientnet import load_lite0_imagenet, load_lite0_imagenet_if_available
from blendmask.modeling.fcos_head import FCOSHead
from blendmask.modeling.fpn import FPN
from blendmask.modeling.losses import BlendMaskCriterion
from blendmask.modeling.panoptic import SemanticFPNHead
from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.structures import BlenderSpec


def build_network(cfg: Config, *, load_pretrained: bool = True) -> BlendMask:
    """The BlendMask network of `cfg.model`; loads the body's ImageNet weights when configured
    (`model.backbone.weights`) and `load_pretrained`.

    Raises:
        ValueError: a ResNet weight file whose input conventions (channel order, scale, mean /
            std, stride placement) or depth differ from the config's; resolve the config first
            with `interop.torchvision_weights.resolve_weight_conventions`.
    """
    m = cfg.model
    body = _build_body(cfg, load_pretrained=load_pretrained)
    panoptic = m.panoptic.enabled
    if panoptic and not hasattr(body, "c2_channels"):
        raise ConfigError(
            f"model.panoptic.enabled: the semantic head needs C2 of a ResNet body, got "
            f"model.backbone.name={m.backbone.name}"
        )
    fpn = FPN(
        in_channels_list=list(body.out_channels),
        out_channels=m.fpn.out_channels,
        top_levels=m.fpn.top_levels,
        p2_in_channels=body.c2_channels if panoptic else 0,
    )
    tower_channels = m.fcos.tower_channels or m.fpn.out_channels
    head = FCOSHead(
        in_channels=m.fpn.out_channels,
        num_classes=m.fcos.num_classes,
        num_levels=len(m.fcos.fpn_strides),
        num_cls_convs=m.fcos.num_cls_convs,
        num_box_convs=m.fcos.num_box_convs,
        num_share_convs=m.fcos.num_share_convs,
        tower_channels=tower_channels,
        norm=m.fcos.norm,
        use_scale=m.fcos.use_scale,
        prior_prob=m.fcos.prior_prob,
    )
    num_attn = m.basis_module.num_bases * m.blender.attn_size**2
    top_layer = nn.Conv2d(tower_channels, num_attn, kernel_size=3, padding=1)
    basis_in = list(m.basis_module.in_features)
    basis = _build_basis(cfg, list(body.out_channels))
    return BlendMask(
        body=body,
        fpn=fpn,
        head=head,
        top_layer=top_layer,
        basis_module=basis,
        fpn_strides=list(m.fcos.fpn_strides),
        basis_in_features=basis_in,
        input_format=m.input_format,
        input_scale=m.input_scale,
        pixel_mean=list(m.pixel_mean),
        pixel_std=list(m.pixel_std),
        panoptic_module=_build_panoptic(cfg) if panoptic else None,
    )


def _build_panoptic(cfg: Config) -> SemanticFPNHead:
    """Panoptic FPN's semantic head on P2-P5: S stuff classes + the "thing" class."""
    p = cfg.model.panoptic
    return SemanticFPNHead(
        in_channels=cfg.model.fpn.out_channels,
        num_classes=p.num_stuff_classes + 1,
        conv_dims=p.conv_dims,
        norm=p.norm,
        common_stride=p.common_stride,
    )


def _build_basis(cfg: Config, body_channels: list[int]) -> nn.Module:
    """The bottom module: ProtoNet on FPN levels or DeepLab on two features."""
    m = cfg.model
    b = m.basis_module
    basis_in = list(b.in_features)
    if b.name == "ProtoNet":
        basis: nn.Module = ProtoNet(
            in_channels=m.fpn.out_channels,
            num_levels=len(basis_in),
            convs_dim=b.convs_dim,
            num_convs=b.num_convs,
            num_bases=b.num_bases,
            norm=b.norm,
            sem_loss_on=b.loss_on,
            num_classes=m.fcos.num_classes,
        )
    else:
        if len(basis_in) != 2:
            raise ConfigError(
                "model.basis_module.in_features: DeepLab takes two features "
                f"(low, high), e.g. ['c3', 'c5'] or ['p3', 'p5'], got {basis_in}"
            )
        channels = {f"c{i + 3}": c for i, c in enumerate(body_channels)}
        channels.update({f"p{i}": m.fpn.out_channels for i in range(3, 8)})
        basis = DeepLabBasis(
            low_channels=channels[basis_in[0]],
            high_channels=channels[basis_in[1]],
            convs_dim=b.convs_dim,
            num_bases=b.num_bases,
            norm=b.norm,
            sem_loss_on=b.loss_on,
            num_classes=m.fcos.num_classes,
        )
    return basis


def blender_spec(cfg: Config) -> BlenderSpec:
    """The blender's settings of `cfg.model.blender`, one value for criterion and post-processor."""
    b = cfg.model.blender
    return BlenderSpec(
        resolution=b.bottom_resolution,
        attn_size=b.attn_size,
        top_interp=b.top_interp,
        pooler_type=b.pooler_type,
        pooler_sampling_ratio=b.pooler_sampling_ratio,
        pooler_scale=b.pooler_scale,
        fixed_onehot=b.fixed_onehot_attention,
    )


def build_criterion(cfg: Config) -> BlendMaskCriterion:
    m = cfg.model
    return BlendMaskCriterion(
        num_classes=m.fcos.num_classes,
        sizes_of_interest=list(m.fcos.sizes_of_interest),
        center_sample=m.fcos.center_sample,
        pos_radius=m.fcos.pos_radius,
        focal_alpha=m.fcos.loss_alpha,
        focal_gamma=m.fcos.loss_gamma,
        blender=blender_spec(cfg),
        instance_loss_weight=m.blender.instance_loss_weight,
        sem_loss_on=m.basis_module.loss_on,
        sem_loss_weight=m.basis_module.loss_weight,
        common_stride=m.basis_module.common_stride,
        panoptic_loss_weight=m.panoptic.loss_weight,
        panoptic_ignore_value=m.panoptic.ignore_value,
    )


def build_postprocessor(cfg: Config) -> BlendMaskPostProcessor:
    m = cfg.model
    return BlendMaskPostProcessor(
        num_classes=m.fcos.num_classes,
        score_thresh=m.fcos.inference_th_test,
        pre_nms_topk=m.fcos.pre_nms_topk_test,
        nms_thresh=m.fcos.nms_th,
        post_nms_topk=m.fcos.post_nms_topk_test,
        thresh_with_ctr=m.fcos.thresh_with_ctr,
        blender=blender_spec(cfg),
        mask_score_power=m.blender.mask_score_power,
        test_flip=cfg.data.test_flip,
        test_vflip=cfg.data.test_vflip,
    )


def build(
    cfg: Config, *, load_pretrained: bool = True
) -> tuple[BlendMask, BlendMaskCriterion, BlendMaskPostProcessor]:
    """(network, criterion, post-processor) for `cfg`; three nn.Modules with no hidden state."""
    cfg.validate()
    return (
        build_network(cfg, load_pretrained=load_pretrained),
        build_criterion(cfg),
        build_postprocessor(cfg),
    )


def _build_body(cfg: Config, *, load_pretrained: bool) -> nn.Module:
    m = cfg.model
    resnet_weights = None
    if load_pretrained and m.backbone.weights and m.backbone.name.startswith("resnet"):
        # The file decides the conventions (RGB/ImageNet stats and stride in 3x3 for
        # torchvision files, BGR-255 and stride in 1x1 for MSRA). The config must already
        # say so: building from a silently adjusted copy would leave the caller saving a config
        # that does not describe the network.
        resnet_weights = read_backbone_weights(m.backbone.weights)
        check_weight_conventions(m, resnet_weights)
    body = build_body(
        m.backbone.name,
        norm=m.backbone.norm,
        freeze_at=m.backbone.freeze_at,
        stride_in_1x1=m.backbone.stride_in_1x1,
        deform_interval=m.backbone.deform_interval,
    )
    if resnet_weights is not None:
        depth = int(m.backbone.name.removeprefix("resnet"))
        load_backbone_weights(body, resnet_weights, depth=depth)
    elif load_pretrained and m.backbone.weights:
        _load_lite0_weights(body, m.backbone.weights)
    return body


def _load_lite0_weights(body: nn.Module, weights: str) -> None:
    if weights == "lite0":
        # Without the `pretrained` extra this warns and keeps the random init (from scratch).
        load_lite0_imagenet_if_available(body)
    else:
        load_lite0_imagenet(body, Path(weights))
