"""Official label tables: how a published layout's mask files store classes.

Each table maps the raw values a layout writes into its masks to class ids ``0..C-1``
(:class:`compress.data.datasets.LabelTable`); the values it reserves for "ignore" become
the run's ``ignore_index``, values it never writes are refused, naming the file.
"""

from __future__ import annotations

from compress.data.datasets import LabelTable

# Cityscapes (cityscapesscripts/helpers/labels.py): (name, id, trainId); trainId 255 is
# ignored in training and evaluation. The license plate (id -1) is never written to the
# label images, so it has no row here.
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8),
    ("terrain", 22, 9), ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12),
    ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
)
CITYSCAPES_CLASSES = [n for n, _, t in sorted(CITYSCAPES_LABELS, key=lambda r: r[2]) if t != 255]
CITYSCAPES_LABEL_IDS = LabelTable(
    "Cityscapes labelIds", "_gtFine_labelIds.png",
    {i: t for _, i, t in CITYSCAPES_LABELS if t != 255},
    tuple(i for _, i, t in CITYSCAPES_LABELS if t == 255))
CITYSCAPES_TRAIN_IDS = LabelTable(
    "Cityscapes labelTrainIds", "_gtFine_labelTrainIds.png",
    {i: i for i in range(len(CITYSCAPES_CLASSES))}, (255,))

# PASCAL VOC 2012: palette PNGs whose indices are the classes; 255 marks object borders
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]
VOC_LABELS = LabelTable("PASCAL VOC", ".png", {i: i for i in range(len(VOC_CLASSES))}, (255,))

# ADE20K SceneParsing (ADEChallengeData2016, objectInfo150.csv: the first name of each
# class); annotation value 0 is "other" (ignored), 1..150 are the classes 0..149 (the
# benchmark's reduce_zero_label)
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
ADE20K_LABELS = LabelTable("ADE20K", ".png",
                           {v: v - 1 for v in range(1, len(ADE20K_CLASSES) + 1)}, (0,))
