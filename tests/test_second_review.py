"""Cornerstones of a second clinical review: ways a comment could come where
a careful lab would give none (a false reassurance), each a class.

Messages are written out byte for byte here from HL7 v2 and the guideline;
the expected output is the input itself (no comment) or the input plus the
comment line written out here, so no expected byte comes from the product.
Facts: ../shared/clinical-facts.md.
"""

from __future__ import annotations

from b12comment.context import ContextStore
from b12comment.core.chain import decide
from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig

RULE = RuleConfig(language="en")
KEY = b"r" * 32
NTE = (
    b"NTE|1|L|Isolated elevated vitamin B12 in children and adolescents under 18 has no clinical "
    b"significance: when B12 (however high) is the only abnormal biochemical finding, it needs no "
    b"concern and no further investigation, not even a repeat B12 measurement. "
    b"(Automatic comment, b12comment rule b12-paed-2)|RE\r"
)
HEAD = (
    "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261120120000||ORU^R01|{cid}|P|2.5.1\r"
    "PID|1||0101150000^^^CPR||Doe^Kim||{birth}|F\r"
    "OBR|1|{req}|F{req}|B12^B12^L|||{collected}||||||||||||||||||F\r"
)
B12 = "OBX|1|NM|14685-2^Cobalamin^LN||1350|pmol/L|250-900|H|||F\r"


def message(
    *others: str,
    cid: str = "C1",
    req: str = "REQ1",
    birth: str = "20150101",
    collected: str = "20261120083000",
    b12: str = B12,
) -> bytes:
    head = HEAD.format(cid=cid, req=req, birth=birth, collected=collected)
    return (head + b12 + "".join(others)).encode("utf-8")


def commented(msg: bytes) -> bytes:
    """`msg` (whose B12 OBX is its last segment) with the comment after it."""
    return msg + NTE


def assert_silent(msg: bytes, reasons: tuple[str, ...], rule: RuleConfig = RULE) -> None:
    out, decision = process(msg, rule)
    assert (out, decision.commented, decision.reasons) == (msg, False, reasons)


def run(*messages: bytes, rule: RuleConfig = RULE):
    store = ContextStore(":memory:", KEY)
    return [decide(store, i, m, rule, "patient", 30.0) for i, m in enumerate(messages, start=1)]


# ---------------------------------------------------------------------------
# A line of a value type that is "no finding" (a date, a person, an address,
# a telephone number) is no finding only while the lab says nothing about it:
# a flag other than N, or a range, makes it a result (a lab's finding sent
# under the wrong OBX-2), and a flagged one vetoes whatever its type.


def test_a_flagged_line_of_a_no_finding_type_still_vetoes():
    for line in (
        "OBX|2|DT|RVD^Return visit date^L||20261201|||H|||F\r",  # a flagged date
        "OBX|2|TS|4544-3^Hematocrit^LN||0.29|||L|||F\r",  # a number sent as TS, flagged low
        "OBX|2|XPN|MN^Name^L||Hansen^Mette|||A|||F\r",  # flagged abnormal, whatever it is
    ):
        assert_silent(message(line), ("other_abnormal",))


def test_a_no_finding_type_with_a_range_is_a_result_to_judge():
    # A haematocrit sent with OBX-2 = TS and its range: not a date, so judged;
    # its value cannot be read as a quantity of a time stamp: doubt.
    line = "OBX|1|TS|4544-3^Hematocrit^LN||0.29||0.35-0.45||||F\r"
    msg = message(b12=line + B12.replace("OBX|1|", "OBX|2|"))
    assert_silent(msg, ("context_unreadable",))


def test_a_no_finding_type_with_a_unit_is_a_result_to_judge():
    # a glucose of 25.3 mmol/L sent with OBX-2 = TS: a date has no unit
    line = "OBX|2|TS|2345-7^Glucose^LN||25.3|mmol/L|||||F\r"
    assert_silent(message(line), ("context_unreadable",))


def test_an_unflagged_unranged_date_still_never_silences_the_comment():
    line = "OBX|1|DT|RVD^Return visit date^L||20261201||||||F\r"
    msg = message(b12=line + B12.replace("OBX|1|", "OBX|2|"))
    assert process(msg, RULE)[0] == commented(msg)


def test_an_earlier_flagged_line_of_a_no_finding_type_vetoes_from_the_context():
    earlier = message(
        cid="E1",
        req="REQ-A",
        collected="20261110083000",
        b12="OBX|1|DTM|XDTM^Onset^L||202611090800+0100|||A|||F\r",
    )
    later = message(cid="L1", req="REQ-B")
    first, second = run(earlier, later)
    assert first.output == earlier
    assert second.output == later
    assert second.decision.reasons == ("other_abnormal_recent",)


# ---------------------------------------------------------------------------
# A normal answer ("Negative", "Not detected", ...) is normal only when it is
# the whole value: not the first part of a value whose other components or
# repetitions say more, and not against a reference the lab wrote in words
# that says otherwise.


def test_a_normal_word_is_normal_only_as_the_whole_value():
    for line in (
        # an ST sent with an unescaped ^: the second half is a positive finding
        "OBX|2|ST|600-7^Culture^LN||Negative^but Staphylococcus aureus isolated||||||F\r",
        # two answers in repetitions: the second is positive
        "OBX|2|ST|5196-1^HBsAg^LN||Negative~Positive||||||F\r",
        "OBX|2|CWE|5196-1^HBsAg^LN||260385009^Negative^SCT~10828004^Positive^SCT||||||F\r",
    ):
        assert_silent(message(line), ("context_unreadable",))


def test_a_number_with_a_second_repetition_is_not_read_as_the_first_alone():
    # 7.5 is inside 6.5-8.5; the second repetition 4.1 is not
    line = "OBX|2|NM|718-7^Hemoglobin^LN||7.5~4.1|mmol/L|6.5-8.5||||F\r"
    assert_silent(message(line), ("context_unreadable",))


def test_a_normal_word_against_a_reference_in_words_that_says_otherwise_is_doubt():
    # Rubella IgG "Negative" where the lab's reference is "Positive" (immune):
    # not the normal answer for this test.
    line = "OBX|2|ST|20458-6^Rubella IgG^LN||Negative||Positive||||F\r"
    assert_silent(message(line), ("context_unreadable",))
    # the same word under a reference that is itself a normal answer stays normal
    same = message("OBX|2|ST|5196-1^HBsAg^LN||Negative||Negativ||||F\r")
    assert process(same, RULE)[0] != same  # commented (the comment goes after the B12 OBX)


def test_a_single_normal_word_still_is_normal():
    line = "OBX|1|ST|5196-1^HBsAg^LN||Not detected||||||F\r"
    msg = message(b12=line + B12.replace("OBX|1|", "OBX|2|"))
    assert process(msg, RULE)[0] == commented(msg)


def test_a_b12_of_two_repetitions_is_not_read():
    msg = message(b12="OBX|1|NM|14685-2^Cobalamin^LN||1350~95|pmol/L|250-900|H|||F\r")
    assert_silent(msg, ("unreadable_value",))


# ---------------------------------------------------------------------------
# Time zones: a time stamp with an offset is a moment; its date is the
# sender's calendar date. Where that zone is in doubt (none known, or the
# message time's offset and the site's zone disagree across a summer-time
# change), the date is in doubt too, and so is an 18th birthday on it. A
# birth time with an offset is a moment as well.


def ages_message(birth: str, collected: str, msh7: str) -> bytes:
    return (
        f"MSH|^~\\&|LAB|HOSP|EHR|HOSP|{msh7}||ORU^R01|Z1|P|2.5.1\r"
        f"PID|1||0101150000^^^CPR||Doe^Kim||{birth}|F\r"
        f"OBR|1|REQ1|FREQ1|B12^B12^L|||{collected}||||||||||||||||||F\r"
        f"{B12}"
    ).encode("ascii")


def test_an_offset_without_a_known_zone_leaves_the_date_in_doubt():
    # 23:30 UTC on the 19th is the 20th (the 18th birthday) in Denmark; MSH-7
    # has no offset and no site zone is configured: not certainly under 18.
    m = ages_message("20081120", "20261119233000+0000", "20261120090000")
    assert_silent(m, ("adult",))
    # a day earlier it is the 18th or 19th anywhere: 17
    m = ages_message("20081120", "20261118233000+0000", "20261120090000")
    assert process(m, RULE)[0] == commented(m)


def test_a_summer_time_change_between_collection_and_message_time():
    # Copenhagen leaves summer time on 25 October 2026. Collected 22:30 UTC on
    # 23 October = 00:30 on the 24th in Copenhagen (+0200): the 18th birthday.
    # MSH-7 was written after the change (+0100): by its offset alone, the 23rd.
    m = ages_message("20081024", "20261023223000+0000", "20261026090000+0100")
    site = RuleConfig(language="en", timezone="Europe/Copenhagen")
    assert_silent(m, ("adult",), site)


def test_a_birth_time_with_an_offset_is_a_moment_too():
    # Born 00:30 on 20 November at +0200 = 23:30 on the 19th at the sender's
    # +0100: the 18th birthday is the 19th, the collection day.
    m = ages_message("20081120003000+0200", "20261119200000", "20261119210000+0100")
    assert_silent(m, ("adult",))


def test_a_birth_that_could_be_after_the_collection_is_age_unknown():
    # Born 08:00 (local); collected 08:30 at +0100 with the sender's zone not
    # known: 07:30 local at +0000, before the birth.
    m = ages_message("20261120080000", "20261120083000+0100", "20261120090000")
    assert_silent(m, ("age_unknown",))


# ---------------------------------------------------------------------------
# A low B12 beside an elevated one in the same message is a deficiency: the
# same finding that vetoes from an earlier message vetoes here.


def test_a_low_b12_in_the_same_message_vetoes_the_elevated_one():
    low = "OBX|1|NM|14685-2^Cobalamin^LN||95|pmol/L|250-900|L|||F\r"
    high = "OBX|2|NM|14685-2^Cobalamin^LN||1350|pmol/L|250-900|H|||F\r"
    msg = message(b12=low + high)
    out, decision = process(msg, RULE)
    assert out == msg
    assert [(r.obx_index, r.reasons) for r in decision.results] == [(1, ("not_elevated",)), (2, ("other_abnormal",))]
    assert [(b.obx, b.verdict) for b in decision.results[1].blockers] == [(1, "abnormal")]


def test_a_repeat_elevated_b12_in_the_same_message_does_not_veto():
    first = "OBX|1|NM|14685-2^Cobalamin^LN||1200|pmol/L|250-900|H|||F\r"
    msg = message(b12=first + B12.replace("OBX|1|", "OBX|2|"))
    out, decision = process(msg, RULE)
    assert out == (first.encode() + NTE).join(msg.split(first.encode(), 1)) + NTE
    assert decision.commented


# ---------------------------------------------------------------------------
# The patient's other results are found by PID-3: a message that names no
# identifier cannot be looked up in the look-back, so in "patient" mode its
# comment is not confirmed (context_unavailable, the detail says why).


def test_a_message_without_a_patient_identifier_gets_no_comment_in_patient_mode():
    earlier = (
        "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261110120000||ORU^R01|E9|P|2.5.1\r"
        "PID|1||||Doe^Kim||20150101|F\r"
        "OBR|1|REQ-A|FREQ-A|HB^Hb^L|||20261110083000||||||||||||||||||F\r"
        "OBX|1|NM|718-7^Hemoglobin^LN||5.1|mmol/L|6.5-8.5|L|||F\r"
    ).encode("ascii")
    later = (
        "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261120120000||ORU^R01|L9|P|2.5.1\r"
        "PID|1||||Doe^Kim||20150101|F\r"
        "OBR|1|REQ-B|FREQ-B|B12^B12^L|||20261120083000||||||||||||||||||F\r"
        f"{B12}"
    ).encode("ascii")
    _, second = run(earlier, later)
    assert second.output == later
    assert second.decision.reasons == ("context_unavailable",)
    assert "PID-3" in second.decision.detail
    # the message alone (no store) is decided on its own results, as before
    assert process(later, RULE)[0] == commented(later)


def test_another_b12_that_cannot_be_judged_is_doubt_in_the_message_and_from_the_context():
    # "se svar" (see answer) against a numeric range: it could be a low B12
    unread = "OBX|1|ST|14685-2^Cobalamin^LN||se svar|pmol/L|250-900||||F\r"
    msg = message(b12=unread + B12.replace("OBX|1|", "OBX|2|"))
    out, decision = process(msg, RULE)
    assert (out, decision.results[1].reasons) == (msg, ("context_unreadable",))
    earlier = message(cid="E2", req="REQ-A", collected="20261110083000", b12=unread)
    later = message(cid="L2", req="REQ-B")
    _, second = run(earlier, later)
    assert (second.output, second.decision.reasons) == (later, ("context_unreadable_recent",))


def test_a_time_stamp_with_an_offset_that_is_no_offset_is_unreadable():
    # +2500 is no offset (HL7 DTM: +/-HHMM): the zone of the time is unknown,
    # so its date is not read as written
    m = ages_message("20081120", "20261119233000+2500", "20261120090000")
    assert_silent(m, ("age_unknown",))
    m = ages_message("20081120+9900", "20261118083000", "20261120090000")
    assert_silent(m, ("age_unknown",))


# ---------------------------------------------------------------------------
# A requisition is its patient's, whichever of the patient's PID-3
# identifiers a message sends first: an order of it not yet finished keeps
# the comment away (requisition_pending) in either order.


def test_a_requisition_is_found_whichever_identifier_comes_first():
    def msg(pid: str, cid: str, body: str) -> bytes:
        return (
            f"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261120120000||ORU^R01|{cid}|P|2.5.1\r"
            f"PID|1||{pid}||Doe^Kim||20150101|F\r" + body
        ).encode("ascii")

    haematology = msg(
        "0101150000^^^CPR~77001^^^MRN",
        "H1",
        "ORC|RE|REQ-A\rOBR|1|REQ-A|F1|HB^Hb^L|||20261120083000||||||||||||||||||I\r",
    )
    b12 = "ORC|RE|REQ-A\rOBR|1|REQ-A|F2|B12^B12^L|||20261120083000||||||||||||||||||F\r" + B12
    for pid in ("0101150000^^^CPR~77001^^^MRN", "77001^^^MRN~0101150000^^^CPR"):
        later = msg(pid, "B1", b12)
        _, second = run(haematology, later)
        assert (second.output, second.decision.reasons) == (later, ("requisition_pending",))


def test_a_b12_whose_flags_contradict_each_other_is_not_elevated():
    # OBX-8 repeats: H with L (or N) is not the lab saying "elevated"
    for flags in ("H~L", "L~H", "H~N"):
        msg = message(b12=f"OBX|1|NM|14685-2^Cobalamin^LN||1350|pmol/L||{flags}|||F\r")
        assert_silent(msg, ("not_elevated",))
