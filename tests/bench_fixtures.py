"""Test helper: small fixtures of the seven published benchmarks in their exact published formats, with rendered
images (plain PIL drawings, never real data), and a scoring model whose similarities are fixed by the inputs.

Every `write_<benchmark>(folder, ...)` writes the benchmark's files under `folder` exactly as its authors lay
them out and returns the expected facts (item counts per subset, ids, bad files). `bad=True` also adds an
unreadable (corrupt) image and a missing one where the benchmark has files on disk.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (150, 60, 200), (40, 200, 200),
           (240, 130, 30), (120, 120, 120)]


def render(path: Path, seed: int, size: tuple[int, int] = (64, 64)) -> Path:
    """A small drawing (background, a rectangle and a disc, colours and places from `seed`) saved at `path`."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, COLOURS[seed % len(COLOURS)])
    d = ImageDraw.Draw(img)
    w, h = size
    x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    d.rectangle([x, y, x + w // 3, y + h // 3], fill=COLOURS[(seed * 3 + 1) % len(COLOURS)])
    cx, cy = int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4))
    d.ellipse([cx - w // 6, cy - h // 6, cx + w // 6, cy + h // 6], fill=COLOURS[(seed * 5 + 2) % len(COLOURS)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def corrupt(path: Path) -> Path:
    """A file with an image's name and no image inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff this is not a jpeg" * 4)
    return path


def _dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


# --- a model with controlled similarities -------------------------------------------------------------------------
class Preprocess:
    """PIL image -> (3, 16, 16) float tensor in [0, 1] (deterministic, no augmentation)."""

    def __call__(self, im):
        return torch.from_numpy(np.asarray(im.convert("RGB").resize((16, 16)), dtype=np.float32) / 255).permute(2, 0, 1)

    def __repr__(self):
        return "bench_fixtures.Preprocess(16x16)"


def tokenize(texts) -> torch.Tensor:
    """Each string -> 8 token ids from its sha1 (a stand-in tokenizer: equal strings, equal tokens)."""
    return torch.tensor([[int.from_bytes(hashlib.sha1(t.encode()).digest()[2 * i:2 * i + 2], "little")
                          for i in range(8)] for t in texts], dtype=torch.long)


class FakeCLIP(torch.nn.Module):
    """Image features: a fixed random projection of the 16x16 pixels; text features: the sum of fixed random token
    embeddings. Similarities are deterministic functions of the inputs: some choices come out right, some wrong."""

    def __init__(self, dim: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(3 * 16 * 16, dim, generator=g), requires_grad=False)
        self.table = torch.nn.Parameter(torch.randn(65536, dim, generator=g), requires_grad=False)

    def encode_image(self, x):
        return (x.float().flatten(1) - 0.5) @ self.proj          # (B, dim)

    def encode_text(self, tokens):
        return self.table[tokens].sum(1)                          # (B, dim)


def fake_model():
    """(model, preprocess, tokenizer) of FakeCLIP."""
    return FakeCLIP().eval(), Preprocess(), tokenize


def features(model, preprocess, images, texts):
    """Reference features computed directly (no clipkit engine): L2-normalised (N, d) arrays."""
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]))
        txt = model.encode_text(tokenize(texts))
    n = lambda f: torch.nn.functional.normalize(f.float(), dim=-1).numpy()
    return n(img), n(txt)


# --- the benchmarks -----------------------------------------------------------------------------------------------
def write_sugarcrepe(folder: Path, bad: bool = False) -> dict:
    """The seven subset files (3 items each, dict keyed "0".."2") and val2017/ images shared across subsets."""
    subsets = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
    names = [f"{i:012d}.jpg" for i in range(1, 9)]
    for i, n in enumerate(names):
        render(folder / "val2017" / n, i)
    for s_i, s in enumerate(subsets):
        data = {str(k): {"filename": names[(s_i * 3 + k) % len(names)], "caption": f"a {s} photo number {k}",
                         "negative_caption": f"not a {s} photo number {k}"} for k in range(3)}
        _dump(folder / f"{s}.json", data)
    out = {"counts": {s: 3 for s in subsets}, "images": names}
    if bad:
        corrupt(folder / "val2017" / names[0])
        (folder / "val2017" / names[1]).unlink()
        out["bad"] = names[:2]
    return out


RELATIONS = ["on", "holding", "near", "next to", "on", "holding", "sitting on", "on", "near", "holding", "wearing",
             "on"]   # 'near' and 'next to' are in the authors' symmetric list


def write_aro(folder: Path) -> dict:
    """VG-Relation (12 items), VG-Attribution (30 items: one pair with 25, the rest below the cut) on cropped
    100x80 images, and a 2-image Karpathy test split for COCO-Order (4 items)."""
    for i in range(6):
        render(folder / "images" / f"vg_{i}.jpg", 10 + i, (100, 80))
    rel = [{"image_id": i, "image_path": f"vg_{i % 6}.jpg", "bbox_x": 5 + i, "bbox_y": 4, "bbox_w": 60, "bbox_h": 50,
            "relation_name": r, "true_caption": f"the cup is {r} the table {i}",
            "false_caption": f"the table is {r} the cup {i}"} for i, r in enumerate(RELATIONS)]
    pairs = ["red_blue"] * 25 + ["green_white"] * 3 + ["black_pink"] * 2
    att = [{"image_id": i, "image_path": f"vg_{i % 6}.jpg", "bbox_x": 0, "bbox_y": i % 20, "bbox_w": 70, "bbox_h": 60,
            "attributes": p.split("_"), "true_caption": f"the {p.split('_')[0]} cup and the {p.split('_')[1]} bowl {i}",
            "false_caption": f"the {p.split('_')[1]} cup and the {p.split('_')[0]} bowl {i}"}
           for i, p in enumerate(pairs)]
    _dump(folder / "visual_genome_relation.json", rel)
    _dump(folder / "visual_genome_attribution.json", att)
    karpathy = []
    for i in range(2):
        img = f"val2014/COCO_val2014_{i:012d}.jpg"
        render(folder / img, 30 + i)
        karpathy.append({"image": img, "image_id": i, "caption": [f"A small red cup sits on a wooden table {i}.",
                                                                   f"Two dogs run across the green grass {i}."]})
    _dump(folder / "coco_karpathy_test.json", karpathy)
    return {"counts": {"visual_genome_relation": len(rel), "visual_genome_attribution": len(att), "coco_order": 4},
            "relations": RELATIONS, "attribute_pairs": pairs}


def toy_tagger(text: str):
    """A stand-in part-of-speech tagger for the Order perturbations: a few nouns and adjectives, the rest 'X'."""
    nouns = {"cup", "table", "dogs", "grass"}
    adjs = {"small", "red", "wooden", "green"}
    return [(t, "NN" if t.lower() in nouns else "JJ" if t.lower() in adjs else "X") for t in text.split()]


def write_whatsup(folder: Path) -> dict:
    """Controlled A (2 object pairs x 4 prepositions), controlled B (1 x 4), and the four QA files (2-3 items)."""
    a = []
    for o1, o2 in (("mug", "plate"), ("beer-bottle", "armchair")):
        preps = {"left_of": "to the left of", "right_of": "to the right of", "on": "on", "under": "under"}
        for p, words in preps.items():
            name = f"{o1}_{p}_{o2}.jpeg"
            render(folder / "controlled_images" / name, len(a) + 40)
            options = [f"A {o1} {words} a {o2}"] + [f"A {o1} {w} a {o2}" for q, w in preps.items() if q != p]
            a.append({"image_path": f"data/controlled_images/{name}", "caption_options": options})
    b = []
    preps = {"left_of": "left of", "right_of": "right of", "in-front_of": "in front of", "behind": "behind"}
    for p, words in preps.items():
        name = f"cube_{p}_sphere.jpeg"
        render(folder / "controlled_clevr" / name, len(b) + 50)
        b.append({"image_path": f"data/controlled_clevr/{name}",
                  "caption_options": [f"A cube {words} a sphere"] + [f"A cube {w} a sphere" for q, w in preps.items()
                                                                    if q != p]})
    _dump(folder / "controlled_images_dataset.json", a)
    _dump(folder / "controlled_clevr_dataset.json", b)
    qa = {"coco_qa_one_obj": [[139, "A photo of a dog on the left", "A photo of a dog on the right"],
                              [285, "A photo of a cat on the right", "A photo of a cat on the left"],
                              [632, "A photo of a bed on the top", "A photo of a bed on the bottom"]],
          "coco_qa_two_obj": [[139, "A dog to the left of a cat", "A dog to the right of a cat"],
                              [724, "A cup above a table", "A cup below a table"]],
          "vg_qa_one_obj": [[2410, "A photo of a tree on the left", "A photo of a tree on the right"],
                            [2411, "A photo of a car on the right", "A photo of a car on the left"]],
          "vg_qa_two_obj": [[2410, "A man in front of a bus", "A man behind a bus"],
                            [2412, "A lamp to the right of a sofa", "A lamp to the left of a sofa"]]}
    for name, rows in qa.items():
        _dump(folder / f"{name}.json", rows)
        for image_id, *_ in rows:
            path = (folder / "val2017" / f"{image_id:012d}.jpg" if name.startswith("coco")
                    else folder / "vg_images" / f"{image_id}.jpg")
            if not path.exists():
                render(path, image_id % 97)
    return {"counts": {"controlled_images": 8, "controlled_clevr": 4, **{k: len(v) for k, v in qa.items()}}}


def write_winoground(folder: Path) -> dict:
    """examples.jsonl (6 examples) and images/ex_<i>_img_<k>.png."""
    tags = [("Object", "", 1, "Object"), ("Relation", "Symbolic", 1, "Relation"), ("Both", "", 2, "Both"),
            ("Relation", "", 1, "Relation"), ("Object", "Pragmatics", 1, "Object"), ("Relation", "", 2, "Relation")]
    lines = []
    for i, (tag, sec, preds, coll) in enumerate(tags):
        for k in (0, 1):
            render(folder / "images" / f"ex_{i}_img_{k}.png", 60 + 2 * i + k)
        lines.append(json.dumps({"id": i, "caption_0": f"the cat chases the dog {i}",
                                 "caption_1": f"the dog chases the cat {i}", "image_0": f"ex_{i}_img_0",
                                 "image_1": f"ex_{i}_img_1", "tag": tag, "secondary_tag": sec, "num_main_preds": preds,
                                 "collapsed_tag": coll}))
    (folder / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return {"counts": {"examples": len(tags)}, "tags": tags}


VALSE_PIECES = ("existence", "plurals", "counting-hard", "counting-small-quant", "counting-adversarial", "relations",
                "action-replacement", "actant-swap", "coreference-standard", "coreference-hard", "foil-it")
VALSE_DATASETS = {"existence": "visual7w", "plurals": "coco2017", "relations": "coco2017", "foil-it": "coco2014",
                  "action-replacement": "SWiG", "actant-swap": "SWiG", "coreference-standard": "visdial",
                  "coreference-hard": "visdial"}


def write_valse(folder: Path) -> dict:
    """The 11 piece files, 3 items each (votes 3, 2 and 1: the last is not valid), images in one folder images/."""
    valid = {}
    for p_i, piece in enumerate(VALSE_PIECES):
        data = {}
        for k, votes in enumerate((3, 2, 1)):
            key = f"{piece}_{k}"
            image = f"{piece}_{k % 2}.jpg"
            if not (folder / "images" / image).exists():
                render(folder / "images" / image, 70 + 2 * p_i + k % 2)
            caption = f"there are {k + 2} things in the {piece} picture"
            data[key] = {"dataset": VALSE_DATASETS.get(piece, "visual7w"), "original_split": "test",
                         "dataset_idx": image, "linguistic_phenomena": piece, "image_file": image,
                         # one piece stores the caption as a list, as some VALSE files do
                         "caption": [caption] if piece == "plurals" else caption,
                         "classes": "things", "classes_foil": "stuff",
                         "mturk": {"foil": 3 - votes, "caption": votes, "other": 0},
                         "foil": f"there are no things in the {piece} picture {k}"}
        valid[piece] = [f"{piece}_0", f"{piece}_1"]
        _dump(folder / f"{piece}.json", data)
    return {"counts": {p: 2 for p in VALSE_PIECES}, "valid": valid}


COUNT_TEXTS = ["Two cats sleeping on a sofa", "a bowl with three apples", "four chairs around a table",
               "Five birds on a wire", "six candles on a cake", "seven kids playing", "eight pencils in a cup",
               "nine stars on a flag", "ten boats in a harbour", "two dogs in the snow", "A plate of 3 cookies",
               "four wheels of a car", "FIVE fingers of a hand", "six eggs in a carton", "a family of seven ducks",
               "eight legs of a spider", "nine balls on the lawn", "a dozen roses in a vase"]
COUNT_NUMBERS = [2, 3, 4, 5, 6, 7, 8, 9, 10, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def write_countbench(folder: Path) -> dict:
    """The authors' URL list (CountBench.json, 18 rows) with images/<row>.jpg downloaded beside it, except two dead
    links (rows 4 and 9); row 17's caption has no number word for its count (unswappable)."""
    rows = [{"image_url": f"https://example.invalid/img/{i}.jpg", "text": t, "number": n}
            for i, (t, n) in enumerate(zip(COUNT_TEXTS, COUNT_NUMBERS))]
    _dump(folder / "CountBench.json", rows)
    missing = {4, 9}
    for i in range(len(rows)):
        if i not in missing:
            render(folder / "images" / f"{i}.jpg", 90 + i)
    return {"rows": len(rows), "missing": sorted(missing), "unswappable": [17]}


MMVP_TYPES = ("Orientation and Direction", "Color and Appearance")


def write_mmvp(folder: Path) -> dict:
    """Questions.csv with 10 pairs (20 rows) and `MLLM_VLM Images/<type>/<id>.jpg`."""
    rows = []
    for q in range(1, 21):
        t = MMVP_TYPES[(q - 1) // 10]
        rows.append([q, t, f"the object faces {'left' if q % 2 else 'right'} {(q + 1) // 2}"])
        render(folder / "MLLM_VLM Images" / t / f"{q}.jpg", 110 + q)
    with open(folder / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lndex", "Type", "Statement"])
        w.writerows(rows)
    return {"pairs": 10, "rows": rows}


WRITERS = {"sugarcrepe": write_sugarcrepe, "aro": write_aro, "whatsup": write_whatsup, "winoground": write_winoground,
           "valse": write_valse, "countbench": write_countbench, "mmvp": write_mmvp}


def write_all(data: Path) -> dict:
    """One sub-folder per benchmark under `data` ($CLIPKIT_DATA's layout); returns each writer's facts."""
    return {name: fn(Path(data) / name) for name, fn in WRITERS.items()}
