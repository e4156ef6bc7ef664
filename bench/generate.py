"""A seeded, realistic archive: a regional lab's night of HL7 v2 traffic.

Mix: ORU^R01 with 5 to 40 OBX (some with several OBR groups), ADT and ORM
traffic; about 3% of messages carry a total-B12 result, a fifth of those are
paediatric and half of those elevated, some with other abnormal results;
ISO 8859-1 Danish names; messages of 1 KB to 50 KB, and a few with 5,000 OBX;
a few files are HL7 batch files. Same seed, same bytes. `--patients N`
draws every result message's patient from N patients (each with one
identifier, name and birth date; half of them children in the dense mix),
so a patient's history grows with the archive. That is the team mix;
`--mix realistic` has about 2% of ORU with a B12 result, a tenth of those
children's, and `--mix dense` makes every message an ORU with a B12 result
beside a 10-result normal panel, half of them children's.

    python bench/generate.py OUT_DIR --messages 100000 [--seed 1] [--mix team|realistic|dense] [--patients N]
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

FAMILY = [
    "Jensen",
    "Nielsen",
    "Hansen",
    "Pedersen",
    "Andersen",
    "Christensen",
    "Larsen",
    "Sørensen",
    "Rasmussen",
    "Jørgensen",
    "Petersen",
    "Madsen",
    "Kristensen",
    "Olsen",
    "Thomsen",
    "Østergård",
    "Møller",
    "Lauridsen",
    "Bækgaard",
    "Aagaard",
]
GIVEN = [
    "Søren",
    "Åse",
    "Mads",
    "Freja",
    "Ida",
    "Emil",
    "Karen",
    "Bjørn",
    "Ærø",
    "Jens",
    "Ane",
    "Sofie",
    "Mathias",
    "Line",
    "Frederik",
    "Maja",
    "Øjvind",
    "Helle",
]
TESTS = [  # code, name, unit, low, high, typical
    ("NPU02319", "B-Haemoglobin", "mmol/L", 7.3, 9.5, 8.4),
    ("NPU02593", "B-Leukocytes", "10*9/L", 3.5, 10.0, 6.5),
    ("NPU03568", "B-Platelets", "10*9/L", 145, 390, 250),
    ("NPU19748", "P-CRP", "mg/L", 0, 8, 3),
    ("NPU19651", "P-ALT", "U/L", 10, 70, 30),
    ("NPU04998", "P-Creatinine", "umol/L", 45, 105, 75),
    ("NPU03429", "P-Sodium", "mmol/L", 137, 145, 140),
    ("NPU03230", "P-Potassium", "mmol/L", 3.5, 4.4, 4.0),
    ("NPU01370", "P-Bilirubin", "umol/L", 5, 25, 10),
    ("NPU19673", "P-Albumin", "g/L", 36, 48, 42),
    ("NPU02902", "B-Neutrophils", "10*9/L", 1.5, 7.5, 4.0),
    ("NPU01459", "P-Urate", "mmol/L", 0.15, 0.45, 0.3),
    ("NPU19763", "P-Ferritin", "ug/L", 15, 300, 80),
    ("NPU02508", "P-Folate", "nmol/L", 9, 45, 20),
    ("NPU03607", "P-TSH", "mIU/L", 0.3, 4.0, 1.5),
    ("NPU27300", "P-GGT", "U/L", 10, 75, 25),
]


def _ts(d: date, rng: random.Random) -> str:
    return d.strftime("%Y%m%d") + f"{rng.randrange(7, 16):02d}{rng.randrange(60):02d}00"


def _obx(i: int, test, rng: random.Random, abnormal: bool, when: str) -> str:
    code, name, unit, low, high, typical = test
    if abnormal:
        value, flag = round(high * rng.uniform(1.2, 2.5), 1), "H"
    else:
        value, flag = round(rng.uniform(low, high), 1), "N"
    return f"OBX|{i}|NM|{code}^{name}^IUPP||{value}|{unit}|{low}-{high}|{flag}|||F|||{when}"


def _b12(i: int, rng: random.Random, elevated: bool, when: str) -> str:
    if elevated:
        if rng.random() < 0.3:
            return f"OBX|{i}|SN|14685-2^Cobalamin^LN||>^1476|pmol/L|200-900|H|||F|||{when}"
        return f"OBX|{i}|NM|NPU01700^P-Cobalamin^IUPP||{rng.randrange(1000, 1470)}|pmol/L|200-900|H|||F|||{when}"
    return f"OBX|{i}|NM|NPU01700^P-Cobalamin^IUPP||{rng.randrange(250, 850)}|pmol/L|200-900|N|||F|||{when}"


@dataclass(frozen=True)
class Mix:
    """What share of the archive carries a B12 result, and of those how many
    are children's; `dense`: every message an ORU with a B12 result beside a
    10-result normal panel."""

    b12: float
    children: float
    dense: bool = False


MIXES = {
    "team": Mix(0.03, 0.2),  # the team's night: 3% of ORU with a B12, a fifth of them children
    "realistic": Mix(0.02, 0.1),  # about 2% with a B12, about 10% of those children
    "dense": Mix(1.0, 0.5, dense=True),  # every message a B12 order, half of them children
}


@dataclass(frozen=True)
class Patient:
    identifier: int
    family: str
    given: str
    birth: date


def pool(count: int, day: date, mix: Mix, seed: int = 1) -> list[Patient]:
    """`count` patients, the same for the same seed: children (under 18 on
    `day`) in the share the mix gives its B12 results."""
    rng = random.Random(seed * 7919 + count)
    out = []
    for _ in range(count):
        age = rng.randrange(0, 18) if rng.random() < mix.children else rng.randrange(18, 95)
        birth = day - timedelta(days=365 * age + rng.randrange(365))
        out.append(Patient(rng.randrange(10**9), rng.choice(FAMILY), rng.choice(GIVEN), birth))
    return out


def oru(n: int, rng: random.Random, day: date, mix: Mix = MIXES["team"], patient: Patient | None = None) -> bytes:
    b12 = rng.random() < mix.b12
    paediatric = b12 and rng.random() < mix.children
    elevated = rng.random() < 0.5 if b12 else False
    other_abnormal = rng.random() < (0.3 if b12 else 0.4) and not mix.dense
    age = rng.randrange(0, 18) if paediatric else rng.randrange(18, 95)
    birth = day - timedelta(days=365 * age + rng.randrange(365))
    if patient is not None:
        birth = patient.birth
    collected = _ts(day, rng)
    huge = rng.random() < 0.00005 and not mix.dense
    n_obx = 11 if mix.dense else 5000 if huge else rng.randrange(5, 41)
    groups = 1 if n_obx < 12 or rng.random() < 0.6 else rng.randrange(2, 4)
    msh = f"MSH|^~\\&|KBA-LAB|AUH|EPIC|AUH|{_ts(day, rng)}||ORU^R01^ORU_R01|L{n:09d}|P|2.5.1|||AL|NE|DNK|8859/1"
    if patient is None:  # drawn after the MSH's time: the same bytes as before patients could repeat
        patient = Patient(rng.randrange(10**9), rng.choice(FAMILY), rng.choice(GIVEN), birth)
    identifier, family, given = patient.identifier, patient.family, patient.given
    segs = [
        msh,
        f"PID|1||{identifier:010d}^^^CPR^NNDNK||{family}^{given}||"
        f"{birth:%Y%m%d}|{rng.choice('MF')}|||Vestergade {rng.randrange(1, 99)}^^Aarhus^^8000^DNK",
        f"PV1|1|O|KBA^^^AUH||||GP{rng.randrange(1000):04d}^Lund^Karen",
    ]
    per_group = max(n_obx // groups, 1)
    abnormal_at = rng.randrange(n_obx) if other_abnormal else -1
    b12_at = rng.randrange(min(per_group, n_obx)) if b12 else -1
    i = 0
    for g in range(groups):
        segs.append(f"ORC|RE|REQ{n}-{g}|LAB{n}-{g}||CM")
        segs.append(
            f"OBR|{g + 1}|REQ{n}-{g}|LAB{n}-{g}|PKG{g}^Panel {g}^L|||{collected}|||||||||GP123^Lund^Karen|||||||F"
        )
        count = per_group if g < groups - 1 else n_obx - i
        for _ in range(count):
            if i == b12_at:
                segs.append(_b12(i + 1, rng, elevated, collected))
            else:
                segs.append(_obx(i + 1, TESTS[i % len(TESTS)], rng, i == abnormal_at, collected))
                if rng.random() < 0.05:
                    segs.append("NTE|1|L|Prøven er hæmolyseret; fortolk med forsigtighed.|RE")
            i += 1
    return ("\r".join(segs) + "\r").encode("latin-1")


def adt(n: int, rng: random.Random, day: date) -> bytes:
    segs = [
        f"MSH|^~\\&|PAS|AUH|LIS|AUH|{_ts(day, rng)}||ADT^A0{rng.choice('1348')}^ADT_A01"
        f"|A{n:09d}|P|2.5.1|||||DNK|8859/1",
        f"EVN|A01|{_ts(day, rng)}",
        f"PID|1||{rng.randrange(10**9):010d}^^^CPR^NNDNK||{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"
        f"||19{rng.randrange(30, 99)}0101|F",
        f"PV1|1|I|MED^{rng.randrange(1, 40)}^1^AUH",
        "ZPV|custom|segment",
    ]
    return ("\r".join(segs) + "\r").encode("latin-1")


def orm(n: int, rng: random.Random, day: date) -> bytes:
    segs = [
        f"MSH|^~\\&|EPIC|AUH|KBA-LAB|AUH|{_ts(day, rng)}||ORM^O01^ORM_O01|O{n:09d}|P|2.3",
        f"PID|1||{rng.randrange(10**9):010d}^^^CPR^NNDNK||{rng.choice(FAMILY)}^{rng.choice(GIVEN)}||19800101|M",
        f"ORC|NW|REQ{n}",
        f"OBR|1|REQ{n}||PKG1^Anaemia panel^L|||{_ts(day, rng)}",
    ]
    return ("\r".join(segs) + "\r").encode("latin-1")


def message(
    n: int, rng: random.Random, day: date, mix: Mix = MIXES["team"], patients: list[Patient] | None = None
) -> bytes:
    patient = rng.choice(patients) if patients else None
    if mix.dense:
        return oru(n, rng, day, mix, patient)
    r = rng.random()
    if r < 0.7:
        return oru(n, rng, day, mix, patient)
    if r < 0.85:
        return adt(n, rng, day)
    return orm(n, rng, day)


def generate(
    out: Path, messages: int, seed: int = 1, per_file: int = 2000, mix: str = "team", patients: int = 0
) -> list[Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    day = date(2026, 11, 1)
    who = pool(patients, day, MIXES[mix], seed) if patients else []
    paths, n, f = [], 0, 0
    while n < messages:
        count = min(per_file, messages - n)
        batch = rng.random() < 0.1
        path = out / f"night{f // 50:03d}" / f"part{f:05d}.hl7"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            if batch:
                fh.write(b"FHS|^~\\&|KBA-LAB|AUH\rBHS|^~\\&|KBA-LAB|AUH\r")
            for _ in range(count):
                fh.write(message(n, rng, day, MIXES[mix], who))
                n += 1
            if batch:
                fh.write(f"BTS|{count}\rFTS|1\r".encode())
        paths.append(path)
        f += 1
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mix", choices=sorted(MIXES), default="team")
    p.add_argument("--patients", type=int, default=0, help="draw the patients from this many (0: each its own)")
    args = p.parse_args()
    paths = generate(args.out, args.messages, args.seed, mix=args.mix, patients=args.patients)
    size = sum(p.stat().st_size for p in paths)
    print(f"{args.messages} messages in {len(paths)} files, {size / 1e6:.1f} MB, under {args.out}")


if __name__ == "__main__":
    main()
