"""ACK building: the sender's dialect, swapped MSH-3..6, MSA-2 echo, ERR."""

from __future__ import annotations

import hl7

from b12comment.core.segments import DEFAULT_DELIMITERS, Delimiters, read_header
from b12comment.wire.ack import AckError, build_ack, escape_text

ORU = (
    b"MSH|^~\\&|LABSYS|LABFAC|EHR|HOSP|20240102030405||ORU^R01^ORU_R01|CTRL-42|P|2.5.1||||||UNICODE UTF-8\r"
    b"PID|1||123456^^^H^MR||Doe^Jane||20150101|F\r"
)
TS = "20240102030405+0000"


def segments(ack: bytes) -> list[bytes]:
    assert ack.endswith(b"\r")
    return ack[:-1].split(b"\r")


def test_aa_swaps_sender_and_receiver_and_echoes_control_id():
    ack = build_ack(ORU, "AA", "ACK1", TS)
    msg = hl7.parse(ack.decode("ascii"))
    assert str(msg.segment("MSH")[3]) == "EHR"
    assert str(msg.segment("MSH")[4]) == "HOSP"
    assert str(msg.segment("MSH")[5]) == "LABSYS"
    assert str(msg.segment("MSH")[6]) == "LABFAC"
    assert str(msg.segment("MSH")[9]) == "ACK^R01^ACK"
    assert str(msg.segment("MSH")[10]) == "ACK1"
    assert str(msg.segment("MSH")[12]) == "2.5.1"
    assert str(msg.segment("MSA")[1]) == "AA"
    assert str(msg.segment("MSA")[2]) == "CTRL-42"
    assert b"ERR" not in ack
    assert segments(ack)[0].endswith(b"|UNICODE UTF-8")  # MSH-18 kept: copied bytes stay in that charset


def test_ack_holds_no_patient_data():
    ack = build_ack(ORU, "AE", "ACK1", TS, AckError("207", "journal unavailable"))
    assert b"Doe" not in ack and b"123456" not in ack and b"20150101" not in ack


def test_ae_has_err_segment_with_code_severity_and_text():
    ack = build_ack(ORU, "AE", "ACK2", TS, AckError("207", "journal unavailable; send again later"))
    err = segments(ack)[2].split(b"|")
    assert err[0] == b"ERR"
    assert err[3] == b"207^Application internal error^HL70357"
    assert err[4] == b"E"
    assert err[8] == b"journal unavailable; send again later"
    assert segments(ack)[1] == b"MSA|AE|CTRL-42"


def test_sender_encoding_characters_and_escape_are_used():
    msg = b"MSH$%~\\&$GHH LAB$ELAB$EHR$H$2024$$ORU%R01$X9$P$2.5\rPID$1\r"
    ack = build_ack(msg, "AE", "A3", TS, AckError("207", "cost $5 % & more"))
    msh, msa, err = segments(ack)
    assert msh.startswith(b"MSH$%~\\&$EHR$H$GHH LAB$ELAB$")
    assert b"$ACK%R01%ACK$" in msh
    assert msa == b"MSA$AE$X9"
    assert err.split(b"$")[8] == b"cost \\F\\5 \\S\\ \\T\\ more"
    assert err.split(b"$")[3] == b"207%Application internal error%HL70357"


def test_old_version_gets_msa3_text_and_err1_code_and_no_structure_component():
    msg = b"MSH|^~\\&|A|B|C|D|2024||ORU^R01|OLD1|P|2.3\r"
    ack = build_ack(msg, "AR", "A4", TS, AckError("100", "bad"))
    msh, msa, err = segments(ack)
    assert msh.split(b"|")[8] == b"ACK^R01"
    assert msh.split(b"|")[11] == b"2.3"
    assert msa == b"MSA|AR|OLD1|bad"
    assert err == b"ERR|^^^100&Segment sequence error&HL70357"


def test_non_hl7_bytes_get_default_delimiters_and_empty_msa2():
    ack = build_ack(b"hello world", "AR", "A5", TS, AckError("100", "no MSH segment"))
    msh, msa, err = segments(ack)
    assert msh.startswith(b"MSH|^~\\&|")
    assert msh.split(b"|")[8] == b"ACK"
    assert msh.split(b"|")[11] == b"2.5.1"
    assert msa == b"MSA|AR|"
    assert err.split(b"|")[8] == b"no MSH segment"
    header = read_header(ack)
    assert header.control_id == "A5"


def test_odd_delimiters_from_the_corpus_still_give_a_readable_ack():
    msg = b"MSH!$r?@!LIP!LIP!LB!LB!20111207121030!!RSP^SLI^RSP_K11!430102!D!2.5!!!!!IT!!EN\r"
    ack = build_ack(msg, "AA", "A6", TS)
    header = read_header(ack)
    assert header.delimiters.field == b"!"
    assert segments(ack)[1] == b"MSA!AA!430102"
    assert header.field(11) == b"D"


def test_escape_text():
    assert escape_text("a|b^c~d\\e&f", DEFAULT_DELIMITERS) == b"a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert escape_text("line\nbreak ø", DEFAULT_DELIMITERS) == b"line?break ?"
    no_escape = Delimiters(b"|", b"^", b"~", None, b"&", None)
    assert escape_text("a|b^c", no_escape) == b"a b c"


def test_accept_ack_from_its_template_is_build_ack_byte_for_byte():
    """The AA built from a per-dialect template is build_ack's AA, for every
    message of the corpus and samples and for odd headers (short MSH, no
    version, a character set, other delimiters, old versions)."""
    from paths import corpus_files, sample_files

    from b12comment.core.segments import Malformed, read_header
    from b12comment.wire.ack import ACCEPT, accept_ack, build_ack
    from b12comment.wire.split import split_messages

    messages = [
        p.data
        for path in corpus_files() + sample_files()
        for p in split_messages(path.read_bytes())
        if p.kind == "message"
    ]
    messages += [
        b"MSH|^~\\&|A\r",
        b"MSH|^~|A|B|C|D|2024||ORU^R01|X1|T|2.3\r",
        b"MSH#$%*@#A#B#C#D#2024##ORU$R01#X2#P#2.8.2#####UNICODE UTF-8\r",
        b"MSH|^~\\&|A|B|C|D|2024||ORU|X3||2.1\r",
        b"MSH|^~\\&|A|B|C|D|2024||ORU^R01^ORU_R01|X4|P|\r",
    ]
    checked = 0
    for i, m in enumerate(messages):
        try:
            header = read_header(m)
        except Malformed:
            continue
        for cid, ts in ((f"ACK{i}", "20240101120000+0100"), ("B", "2025")):
            assert accept_ack(header, cid, ts) == build_ack(m, ACCEPT, cid, ts, header=header), m[:80]
            checked += 1
    assert checked > 200
