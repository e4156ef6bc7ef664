"""A small builder of ORU^R01 test messages as bytes.

Every parameter is one column of a test table. Fields are written with the
standard delimiters ``|^~\\&`` and then translated to the delimiters asked
for (``fs`` and ``enc``), so a case can use odd encoding characters without
rewriting its field values. Values must therefore not contain delimiter
characters other than the standard ones used as delimiters.
"""

from __future__ import annotations

from dataclasses import dataclass

B12_CODE = "14685-2^Cobalamin (Vitamin B12)^LN"

_CODECS = {"": "latin-1", "8859/1": "latin-1", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8"}


@dataclass(frozen=True)
class Obx:
    """One OBX row (and the NTEs under it)."""

    code: str = "2951-2^Sodium^LN"
    value: str = "140"
    units: str = "mmol/L"
    range: str = "136-145"
    flags: str = ""
    status: str = "F"
    vtype: str = "NM"
    obx14: str = ""
    ntes: tuple = ()  # NTE-3 texts, (set_id, text) or (set_id, text, NTE-4) rows


def b12(value: str = "1500", units: str = "pmol/L", **kw) -> Obx:
    """A total-B12 OBX (LOINC 14685-2 unless `code` is given)."""
    kw.setdefault("code", B12_CODE)
    kw.setdefault("range", "")
    return Obx(value=value, units=units, **kw)


def _obx_segment(set_id: int, o: Obx) -> list[str]:
    seg = f"OBX|{set_id}|{o.vtype}|{o.code}||{o.value}|{o.units}|{o.range}|{o.flags}|||{o.status}|||{o.obx14}"
    out = [seg]
    for i, nte in enumerate(o.ntes, start=1):
        if not isinstance(nte, tuple):
            nte = (str(i), nte)
        out.append(f"NTE|{nte[0]}|L|" + "|".join(nte[1:]))
    return out


def build(
    *,
    birth: str = "20160315",
    collected: str = "20240110083000",  # OBR-7
    obx14: str = "",  # OBX-14 of the B12 OBX
    vtype: str = "NM",
    value: str = "1500",
    units: str = "pmol/L",
    range: str = "",
    flags: str = "",
    status: str = "F",
    code: str = B12_CODE,
    ntes: tuple = (),  # NTEs under the B12 OBX
    others: tuple[Obx, ...] = (),  # further OBX rows in the same OBR group
    before: tuple[Obx, ...] = (),  # OBX rows before the B12 OBX
    group2: tuple[Obx, ...] = (),  # OBX rows of a second OBR group
    obr25: str = "F",  # OBR-25 order status of the B12's order (HL7 table 0123)
    obr25_2: str = "F",  # OBR-25 of the second OBR group
    extra_orders: tuple[str, ...] = (),  # further OBRs with no results yet, by OBR-25
    with_b12: bool = True,
    version: str = "2.5.1",
    fs: str = "|",
    enc: str = "^~\\&",
    charset: str = "",  # MSH-18
    encoding: str | None = None,  # Python codec of the bytes
    msh9: str = "ORU^R01^ORU_R01",
    patient_name: str = "Testesen^Barn",
    extra_pid: bool = False,
    spm17: str | None = None,
    zseg: str | None = None,  # a Z-segment appended at the end
    term: bytes = b"\r",
    final_term: bool = True,
    patient_id: str = "0101169999^^^CPR",  # PID-3
    control_id: str = "CTRL0001",  # MSH-10
    placer: str = "ORD1",  # OBR-2
    filler: str = "FIL1",  # OBR-3
    service: str = "B12^Vitamin B12^L",  # OBR-4
    orc4: str | None = None,  # an ORC with this placer group number before each OBR
) -> bytes:
    """An ORU^R01 message with one patient and a B12 OBX, as bytes."""
    segs: list[str] = []
    msh_rest = f"LAB|HOSP|MW|HOSP|20240110120000||{msh9}|{control_id}|P|{version}|||||{'DK'}|{charset}"
    segs.append(f"PID|1||{patient_id}||" + patient_name + f"||{birth}|M")
    if extra_pid:
        segs.append("PID|2||0202029999^^^CPR||Other^Child||20100101|F")
    segs.append("PV1|1|O")
    if orc4 is not None:
        segs.append(f"ORC|RE|{placer}|{filler}|{orc4}")
    segs.append(f"OBR|1|{placer}|{filler}|{service}|||{collected}" + "|" * 18 + obr25)
    if spm17 is not None:
        segs.append(f"SPM|1|||SER|||||||||||||{spm17}")
    rows: list[Obx] = list(before)
    if with_b12:
        rows.append(
            Obx(
                code=code,
                value=value,
                units=units,
                range=range,
                flags=flags,
                status=status,
                vtype=vtype,
                obx14=obx14,
                ntes=tuple(ntes),
            )
        )
    rows.extend(others)
    for i, o in enumerate(rows, start=1):
        segs.extend(_obx_segment(i, o))
    if group2:
        if orc4 is not None:
            segs.append(f"ORC|RE|ORD2|FIL2|{orc4}")
        segs.append(f"OBR|2|ORD2|FIL2|CBC^Blood count^L|||{collected}" + "|" * 18 + obr25_2)
        for i, o in enumerate(group2, start=1):
            segs.extend(_obx_segment(i, o))
    for i, status in enumerate(extra_orders, start=3):
        segs.append(f"OBR|{i}|ORD{i}|FIL{i}|LIV^Liver panel^L|||{collected}" + "|" * 18 + status)
    if zseg is not None:
        segs.append(zseg)

    std = "|^~\\&"
    target = fs + (enc + "\0\0\0\0")[:4]
    table = {ord(s): t for s, t in zip(std, target, strict=False) if t != "\0" and s != t}
    body = [s.translate(table) for s in [msh_rest] + segs]
    msh = "MSH" + fs + enc + fs + body[0]
    text = term.decode("ascii").join([msh] + body[1:])
    if final_term:
        text += term.decode("ascii")
    codec = encoding or _CODECS.get(charset, "latin-1")
    return text.encode(codec)


def segments(message: bytes) -> list[bytes]:
    """The segments of a message, split on any terminator (for assertions)."""
    return [s for s in message.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r") if s]
