"""Reference patch-based retinal vessel segmentation network (Liskowski & Krawiec 2016): a conv stack and a
dense stack classifying the centre pixel (or a 5x5 window) of a 27x27 patch.

Sources (shared/seeds/, see shared/ARCHITECTURES.md):
  P l.1384-1400  Krawiec: "Segmenting Retinal Blood Vessels with Deep Neural Networks" (Liskowski, Krawiec,
                 IEEE TMI 35(11), 2016); a network in a sliding-window setup predicts the class label of each
                 pixel from a local region (patch) around it.
  P l.1412-1433  27x27 training patches from DRIVE / STARE (GCN, ZCA whitening, augmentation variants).
  P l.1435-1441  the architecture: two main components, a conventional ConvNet stack and a dense stack; each
                 27x27 input patch is handled as a separate image.
  P l.1458-1468  Table III: PLAIN .9683 AUC on DRIVE (and the GCN / ZCA / AUGMENT / BALANCED / NO-POOL
                 variants): trained-model metrics, not checkable here.
  P l.1517-1525  structured prediction (SP): predict the labels of the s x s = 5 x 5 window centred on the
                 patch; "the model is still partially dense (it's not a fully convolutional NN)".
Paper (for what the documents leave out):
  Liskowski, Krawiec 2016 (Sec. III, as recalled, see below): the PLAIN network is four 3x3 convolutional
  layers (64, 64, 128, 128 maps, ReLU) with 2x2 max pooling after the second and the fourth, then fully
  connected layers of 512 and 512 units (ReLU, dropout 0.5) and a soft-max output of 2 classes; NO-POOL drops
  the poolings; SP outputs s^2 sigmoid units.

Stated plainly: the documents give only the two components, the 27x27 RGB input and the outputs (one label,
or 5x5 with SP); the layer widths above are the paper's PLAIN network as recalled for this file: the
paper's table could not be read in this work session (a third-party Keras re-implementation uses the same
64/64/128/128 3x3 convs and 512/512 dense layers); they are the factory's defaults and each is a parameter.
The output are logits: 2 class scores (B, 2) or, with ``structured=s``, s x s
vessel logits (B, s, s). The documents print no parameter count (the PLAIN net here has 1,114,178).
Valid (unpadded) convolutions: 27 -> 25 -> 23 -> 11 -> 9 -> 7 -> 3 maps. No BatchNorm (the
paper has none). Nothing here imports cvkernels, torchvision or timm.
"""
import torch
from torch import nn

from . import register

__all__ = ["VesselPatchNet", "vessel_patch_net"]


class VesselPatchNet(nn.Module):
    """Conv stack + dense stack on (B, C, patch, patch) -> logits (B, num_classes), or (B, s, s) with
    ``structured=s``.

    conv_channels: the 3x3 conv widths (64, 64, 128, 128); pool_after: conv indices followed by 2x2 max pooling
    ((1, 3); () is the NO-POOL variant); hidden: the dense layers (512, 512); dropout: after each dense layer.
    """

    def __init__(self, in_channels=3, patch_size=27, conv_channels=(64, 64, 128, 128), pool_after=(1, 3),
                 hidden=(512, 512), num_classes=2, structured=None, dropout=0.5):
        super().__init__()
        self.patch_size, self.structured = patch_size, structured
        layers, cin, side = [], in_channels, patch_size
        for i, c in enumerate(conv_channels):
            layers += [nn.Conv2d(cin, c, 3), nn.ReLU(inplace=True)]
            cin, side = c, side - 2
            if i in pool_after:
                layers.append(nn.MaxPool2d(2, stride=2))
                side //= 2
        if side < 1:
            raise ValueError(f"patch_size={patch_size} is too small for the conv stack")
        self.features = nn.Sequential(*layers)
        dense, width = [nn.Flatten()], cin * side * side
        for h in hidden:
            dense += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        dense.append(nn.Linear(width, structured * structured if structured else num_classes))
        self.classifier = nn.Sequential(*dense)

    def forward(self, x):
        if tuple(x.shape[-2:]) != (self.patch_size, self.patch_size):
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a {self.patch_size}x{self.patch_size} patch")
        y = self.classifier(self.features(x))
        return y.unflatten(1, (self.structured, self.structured)) if self.structured else y


def vessel_patch_net(**kwargs):
    """Liskowski & Krawiec's PLAIN patch classifier: 27x27 RGB patches, 4 convs + 2 dense layers, 2 classes."""
    return VesselPatchNet(**kwargs)


def _input(batch, config):
    size = config.get("patch_size", 27)
    return torch.randn(batch, config.get("in_channels", 3), size, size)


register(
    "vessel_patch_net", vessel_patch_net,
    small_config=dict(conv_channels=(4, 4, 8, 8), hidden=(16, 16), dropout=0.0),   # still 27x27 patches
    example_input=_input,
    families=(),
    figures={},   # P l.1458-1468 publish trained metrics (AUC .9683 DRIVE), no parameter count
)
