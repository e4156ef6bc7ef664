"""Cornerstone cases of the paediatric B12 rule, one table row per rule branch.

Each row is a message built by tests/builders.py and what must come of it:
whether it is commented, the exact reason codes, the figures the decision
used, and for commented messages the exact output bytes. The expected output
is built independently of b12comment.splice: the builder writes the message
again with the comment NTE already in place.

Facts cited are from ../shared/clinical-facts.md.
"""

from __future__ import annotations

import dataclasses

import pytest
from builders import Obx, b12, build, segments

from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig
from b12comment.core.segments import segment_count

RULE = RuleConfig()
COLLECTED = "20240110083000"

# The comment texts, written out here (not taken from the product). Rule
# b12-paed-1 wrote the first two; b12-paed-2 ends them with a provenance marker.
V1_DA = (
    "Isoleret forhøjet B12 hos børn og unge under 18 år har ingen klinisk betydning: "
    "når B12 (uanset hvor højt) er det eneste abnorme biokemiske fund, skal det ikke "
    "give anledning til bekymring eller yderligere undersøgelser, heller ikke kontrol af B12."
)
V1_EN = (
    "Isolated elevated vitamin B12 in children and adolescents under 18 has no clinical "
    "significance: when B12 (however high) is the only abnormal biochemical finding, it "
    "needs no concern and no further investigation, not even a repeat B12 measurement."
)
DA = V1_DA + " (Automatisk kommentar, b12comment regel b12-paed-2)"
EN = V1_EN + " (Automatic comment, b12comment rule b12-paed-2)"


def ascii_da(text: str) -> str:
    """The documented transliteration for an ASCII (MSH-18 empty) message."""
    for a, b in (("æ", "ae"), ("ø", "oe"), ("å", "aa"), ("Æ", "Ae"), ("Ø", "Oe"), ("Å", "Aa")):
        text = text.replace(a, b)
    return text


def comment_nte(set_id: int, charset: str = "", text: str = DA) -> tuple[str, str, str]:
    """The NTE the product must insert, as a builder NTE row (set ID, NTE-3, NTE-4)."""
    return (str(set_id), ascii_da(text) if charset == "" else text, "RE")


# ---------------------------------------------------------------------------
# The table.
# Columns: builder parameters, commented, reasons, figures of the
# first B12 result (age_years, value_pmol_l, limit_pmol_l, limit_source[,
# decided_by]): limit_source says where the number came from (OBX-7 "range" or
# "age_band"), decided_by what decided "elevated" ("flag", "range", "age_band");
# ANY where a figure is irrelevant (the value of an adult's B12 need not be read).

ANY = object()

INFANT = "20231201"  # 40 days old on COLLECTED
CHILD = "20160315"  # 7 years old -> band 1-12, limit 1200
TEEN_17Y364D = "20060111"  # 17 years 364 days on 2024-01-10
ADULT_18Y0D = "20060110"  # 18th birthday on 2024-01-10

OTHER_LOW = Obx(code="718-7^Hemoglobin^LN", value="6.1", units="mmol/L", range="6.5-8.5", flags="L")
OTHER_OK = Obx()
OTHER_PENDING = Obx(code="1742-6^ALT^LN", value="", units="U/L", range="10-45", status="P")
OTHER_OUTSIDE_NO_FLAG = Obx(code="1988-5^CRP^LN", value="45", units="mg/L", range="<10")

CASES = [
    # id, builder kwargs, commented, reasons, figures
    ("child_nm_band", dict(), True, (), (7, 1500.0, 1200.0, "age_band")),
    ("teen_17y364d", dict(birth=TEEN_17Y364D), True, (), (17, 1500.0, 800.0, "age_band")),
    ("adult_18y0d", dict(birth=ADULT_18Y0D), False, ("adult",), (18, ANY, ANY, ANY)),
    ("adult_old", dict(birth="19700101"), False, ("adult",), (54, ANY, ANY, ANY)),
    (
        "infant_1300_not_elevated",
        dict(birth=INFANT, value="1300"),
        False,
        ("not_elevated",),
        (0, 1300.0, 1400.0, "age_band"),
    ),
    ("infant_1450_elevated", dict(birth=INFANT, value="1450"), True, (), (0, 1450.0, 1400.0, "age_band")),
    # Age band boundaries (clinical-facts.md: <1 y 1400, 1 to <12 y 1200, 12 to <18 y 800)
    (
        "band_364_days_1300",
        dict(birth="20230111", value="1300"),
        False,
        ("not_elevated",),
        (0, 1300.0, 1400.0, "age_band"),
    ),
    ("band_1y0d_1300", dict(birth="20230110", value="1300"), True, (), (1, 1300.0, 1200.0, "age_band")),
    (
        "band_11y364d_1000",
        dict(birth="20120111", value="1000"),
        False,
        ("not_elevated",),
        (11, 1000.0, 1200.0, "age_band"),
    ),
    ("band_12y0d_1000", dict(birth="20120110", value="1000"), True, (), (12, 1000.0, 800.0, "age_band")),
    # A partial date straddling a band boundary takes the youngest age: the higher limit.
    (
        "band_partial_straddles_12",
        dict(birth="2012", value="1000"),
        False,
        ("not_elevated",),
        (11, 1000.0, 1200.0, "age_band"),
    ),
    ("partial_birth_2016", dict(birth="2016"), True, (), (7, 1500.0, 1200.0, "age_band")),
    ("partial_birth_201603", dict(birth="201603"), True, (), (7, 1500.0, 1200.0, "age_band")),
    # 2006 could be 2006-01-01 (18 on collection) or 2006-12-31 (17): could be adult.
    ("partial_birth_straddles_18", dict(birth="2006"), False, ("adult",), None),
    ("partial_birth_month_straddles_18", dict(birth="200601"), False, ("adult",), None),
    ("birth_with_time_and_zone", dict(birth="201603150412+0100"), True, (), (7, 1500.0, 1200.0, "age_band")),
    ("no_birth_date", dict(birth=""), False, ("age_unknown",), (None, ANY, ANY, ANY)),
    ("birth_after_collection", dict(birth="20250101"), False, ("age_unknown",), None),
    ("no_collection_time", dict(collected=""), False, ("age_unknown",), None),
    ("unparseable_birth", dict(birth="2016-03-15"), False, ("age_unknown",), None),
    # OBX-14 and OBR-7 on two sides of 18 (OBR-7 would make the patient
    # 18y2d, or OBX-14 18): the age is not known for sure.
    (
        "obx14_child_obr7_adult",
        dict(birth=TEEN_17Y364D, collected="20240112", obx14=COLLECTED),
        False,
        ("age_unknown",),
        None,
    ),
    (
        "obx14_adult_obr7_child",
        dict(birth=TEEN_17Y364D, collected="20240101", obx14="20240111"),
        False,
        ("age_unknown",),
        None,
    ),
    # OBX-14 comes before OBR-7 for the figures, both on one side of 18.
    (
        "obx14_before_obr7",
        dict(birth=TEEN_17Y364D, collected="20240105", obx14=COLLECTED),
        True,
        (),
        (17, 1500.0, 800.0, "age_band"),
    ),
    (
        "spm17_when_no_obr7",
        dict(collected="", spm17="20240110083000^20240110090000"),
        True,
        (),
        (7, 1500.0, 1200.0, "age_band"),
    ),
    # Values
    ("sn_censored_gt", dict(vtype="SN", value=">^1476"), True, (), (7, 1476.0, 1200.0, "age_band")),
    ("sn_plain", dict(vtype="SN", value="^1350"), True, (), (7, 1350.0, 1200.0, "age_band")),
    ("st_censored_gt", dict(vtype="ST", value=">1476"), True, (), (7, 1476.0, 1200.0, "age_band")),
    ("st_censored_gt_space", dict(vtype="ST", value="> 1476"), True, (), (7, 1476.0, 1200.0, "age_band")),
    # ">1200" against limit 1200: true value is above 1200, elevated (facts: "at or above").
    ("st_censored_at_limit", dict(vtype="ST", value=">1200"), True, (), (7, 1200.0, 1200.0, "age_band")),
    ("st_censored_lt", dict(vtype="ST", value="<1476"), False, ("not_elevated",), (7, 1476.0, 1200.0, "age_band")),
    (
        "sn_censored_lt_with_flag_h",
        dict(vtype="SN", value="<^2000", flags="H"),
        False,
        ("not_elevated",),
        (7, 2000.0, None, None, "flag"),
    ),
    ("st_decimal_comma", dict(vtype="ST", value="1476,0"), True, (), (7, 1476.0, 1200.0, "age_band")),
    ("st_ambiguous_thousands", dict(vtype="ST", value="1,476"), False, ("unreadable_value",), (7, None, None, None)),
    ("nm_text_not_number", dict(value="see note"), False, ("unreadable_value",), None),
    ("sn_range_not_one_quantity", dict(vtype="SN", value="^1200^-^1500"), False, ("unreadable_value",), None),
    ("nm_equal_to_band_limit", dict(value="1200"), False, ("not_elevated",), (7, 1200.0, 1200.0, "age_band")),
    # Units: 2000 pg/mL = 1475.6 pmol/L
    (
        "pg_per_ml",
        dict(value="2000", units="pg/mL", code="2132-9^Cobalamin^LN"),
        True,
        (),
        (7, 1475.6, 1200.0, "age_band"),
    ),
    ("ng_per_l", dict(value="2000", units="ng/L"), True, (), (7, 1475.6, 1200.0, "age_band")),
    (
        "pg_per_ml_below_band",
        dict(value="1600", units="pg/mL"),
        False,
        ("not_elevated",),
        (7, 1180.5, 1200.0, "age_band"),
    ),
    ("unit_in_text_component", dict(units="^pmol/L"), True, (), (7, 1500.0, 1200.0, "age_band")),
    ("unknown_unit", dict(units="nmol/L"), False, ("unknown_unit",), (7, None, None, None)),
    ("missing_unit", dict(units=""), False, ("unknown_unit",), None),
    # Codes
    ("npu_code", dict(code="NPU01700^P-Cobalamin^IUPP"), True, (), None),
    ("npu_local_system", dict(code="NPU01700^P-Cobalamin^NPU"), True, (), None),
    ("alternate_identifier", dict(code="VB12^B12^L^14685-2^Cobalamin^LN"), True, (), None),
    ("loinc_wrong_system", dict(code="14685-2^Cobalamin^L"), False, ("no_b12",), None),
    (
        "holotranscobalamin",
        dict(code="72160-5^Holotranscobalamin^LN", vtype="ST", value=">150"),
        False,
        ("no_b12",),
        None,
    ),
    ("substring_lab125", dict(code="LAB125^B12 lab^L"), False, ("no_b12",), None),
    ("substring_b1222", dict(code="B1222^fish^L"), False, ("no_b12",), None),
    ("not_loinc_14685_3", dict(code="14685-3^Cobalamin^LN"), False, ("no_b12",), None),
    ("code_only_in_text", dict(code="XYZ^14685-2^L"), False, ("no_b12",), None),
    ("no_b12_at_all", dict(with_b12=False, others=(OTHER_OK,)), False, ("no_b12",), None),
    # Elevated: flag, range, band
    (
        "flag_n_value_in_range",
        dict(value="500", range="200-600", flags="N"),
        False,
        ("not_elevated",),
        (7, 500.0, 600.0, "range", "flag"),
    ),
    ("flag_h_no_range", dict(value="500", flags="H"), True, (), (7, 500.0, None, None, "flag")),
    ("flag_h_second_repetition", dict(value="500", flags="A~H"), True, (), (7, 500.0, None, None, "flag")),
    (
        "flag_l",
        dict(value="150", range="200-600", flags="L"),
        False,
        ("not_elevated",),
        (7, 150.0, 600.0, "range", "flag"),
    ),
    ("range_200_600", dict(value="700", range="200-600"), True, (), (7, 700.0, 600.0, "range")),
    ("range_lt_600", dict(value="700", range="<600"), True, (), (7, 700.0, 600.0, "range")),
    ("range_spaces_900_above", dict(value="1000", range="200 - 900"), True, (), (7, 1000.0, 900.0, "range")),
    (
        "range_spaces_900_below",
        dict(value="700", range="200 - 900"),
        False,
        ("not_elevated",),
        (7, 700.0, 900.0, "range"),
    ),
    ("range_pg_ml_converted", dict(value="1000", units="pg/mL", range="200-900"), True, (), (7, 737.8, 664.0, "range")),
    # B12's own OBX-7: present but unreadable is not "no range" (no age-band fallback)
    ("range_words", dict(range="se kommentar"), False, ("range_unreadable",), (7, 1500.0, None, None, None)),
    ("range_sex_specific", dict(range="M: 200-900; F: 250-950"), False, ("range_unreadable",), None),
    ("range_reversed", dict(range="900-200"), False, ("range_unreadable",), None),
    ("range_two_repetitions", dict(range="200-600~250-900"), False, ("range_unreadable",), None),
    ("range_trailing_empty_components", dict(value="700", range="200-600^^"), True, (), (7, 700.0, 600.0, "range")),
    ("range_other_unit", dict(range="200-600 pg/mL"), False, ("range_unreadable",), None),
    (
        "range_unit_after",
        dict(value="700", range="200-600 pmol/L"),
        True,
        (),
        (7, 700.0, 600.0, "range", "range"),
    ),
    ("range_brackets", dict(value="700", range="[200;600]"), True, (), (7, 700.0, 600.0, "range", "range")),
    ("range_prefix", dict(value="950", range="Ref.: 250-900"), True, (), (7, 950.0, 900.0, "range", "range")),
    (
        "range_decimal_comma_below",
        dict(value="850", range="250,0–900,0", charset="UNICODE UTF-8"),
        False,
        ("not_elevated",),
        (7, 850.0, 900.0, "range", "range"),
    ),
    ("range_lower_only", dict(range=">150"), False, ("not_elevated",), (7, 1500.0, None, None, "range")),
    # The lab's flag decides before its range: an unreadable range does not matter then.
    ("range_unreadable_flag_h", dict(range="se kommentar", flags="H"), True, (), (7, 1500.0, None, None, "flag")),
    # A unit inside OBX-5
    ("value_unit_inside_no_obx6", dict(vtype="ST", value="1350 pmol/L", units=""), True, (), (7, 1350.0, 1200.0)),
    ("value_unit_inside_same", dict(vtype="ST", value="1350 pmol/L"), True, (), (7, 1350.0, 1200.0)),
    ("value_unit_inside_censored", dict(vtype="ST", value=">1476 pmol/L", units=""), True, (), (7, 1476.0)),
    (
        "value_unit_inside_pg_ml",
        dict(vtype="ST", value="2000 pg/mL", units="", code="2132-9^Cobalamin^LN"),
        True,
        (),
        (7, 1475.6, 1200.0),
    ),
    ("value_unit_disagrees", dict(vtype="ST", value="1350 pg/mL"), False, ("unreadable_value",), (7, None)),
    ("value_unit_unknown", dict(vtype="ST", value="1350 nmol/L", units=""), False, ("unreadable_value",), None),
    ("value_unit_unknown_obx6", dict(vtype="ST", value="1350 pmol", units="pmol"), False, ("unknown_unit",), None),
    # Status
    ("status_corrected", dict(status="C"), True, (), None),
    ("status_preliminary", dict(status="P"), False, ("status_not_final",), None),
    ("status_deleted", dict(status="D"), False, ("status_not_final",), None),
    ("status_empty", dict(status=""), False, ("status_not_final",), None),
    # Order status (OBR-25, HL7 table 0123): the comment says B12 is the only abnormal
    # finding, which cannot be said while an order is unfinished.
    ("own_order_corrected", dict(obr25="C"), True, (), None),
    ("own_order_partial", dict(obr25="A"), False, ("order_not_final",), None),
    ("own_order_preliminary", dict(obr25="P"), False, ("order_not_final",), None),
    ("own_order_not_verified", dict(obr25="R"), False, ("order_not_final",), None),
    ("own_order_in_lab", dict(obr25="I"), False, ("order_not_final",), None),
    ("own_order_no_results_yet", dict(obr25="N"), False, ("order_not_final",), None),
    ("own_order_scheduled", dict(obr25="S"), False, ("order_not_final",), None),
    ("own_order_received", dict(obr25="O"), False, ("order_not_final",), None),
    ("own_order_corrected_not_final", dict(obr25="M"), False, ("order_not_final",), None),
    ("own_order_cannot_be_done", dict(obr25="X"), False, ("order_not_final",), None),
    ("own_order_lower_case_p", dict(obr25="p"), False, ("order_not_final",), None),
    (
        "own_order_and_result_preliminary",
        dict(obr25="P", status="P"),
        False,
        ("status_not_final", "order_not_final"),
        None,
    ),
    ("own_order_not_stated", dict(obr25=""), True, (), None),
    ("other_order_partial", dict(group2=(OTHER_OK,), obr25_2="A"), False, ("context_pending",), None),
    ("other_order_preliminary", dict(group2=(OTHER_OK,), obr25_2="P"), False, ("context_pending",), None),
    ("other_order_corrected", dict(group2=(OTHER_OK,), obr25_2="C"), True, (), None),
    ("other_order_not_stated_final_results", dict(group2=(OTHER_OK,), obr25_2=""), True, (), None),
    (
        "other_order_not_stated_pending_result",
        dict(group2=(OTHER_PENDING,), obr25_2=""),
        False,
        ("context_pending",),
        None,
    ),
    ("other_order_cancelled", dict(extra_orders=("X",)), True, (), None),
    ("other_order_without_results_final", dict(extra_orders=("F",)), True, (), None),
    ("other_order_without_results_not_stated", dict(extra_orders=("",)), False, ("context_pending",), None),
    ("other_order_in_lab", dict(extra_orders=("I",)), False, ("context_pending",), None),
    ("other_order_scheduled", dict(extra_orders=("S",)), False, ("context_pending",), None),
    ("other_order_received", dict(extra_orders=("O",)), False, ("context_pending",), None),
    (
        "other_order_pending_and_other_abnormal",
        dict(others=(OTHER_LOW,), extra_orders=("I",)),
        False,
        ("other_abnormal", "context_pending"),
        None,
    ),
    # Context: isolated or not
    ("other_normal_same_group", dict(others=(OTHER_OK, Obx(flags="N"))), True, (), None),
    ("other_abnormal_same_group", dict(others=(OTHER_LOW,)), False, ("other_abnormal",), None),
    ("other_abnormal_other_obr_group", dict(group2=(OTHER_OK, OTHER_LOW)), False, ("other_abnormal",), None),
    ("other_abnormal_before_b12", dict(before=(OTHER_LOW,)), False, ("other_abnormal",), None),
    ("other_unknown_flag", dict(others=(Obx(flags="XYZ"),)), False, ("other_abnormal",), None),
    ("other_outside_range_no_flag", dict(others=(OTHER_OUTSIDE_NO_FLAG,)), False, ("other_abnormal",), None),
    ("other_pending", dict(others=(OTHER_PENDING,)), False, ("context_pending",), None),
    (
        "other_pending_and_abnormal",
        dict(others=(OTHER_PENDING, OTHER_LOW)),
        False,
        ("other_abnormal", "context_pending"),
        None,
    ),
    ("other_cannot_be_obtained", dict(others=(Obx(value="", status="X"),)), True, (), None),
    ("other_deleted_abnormal_ignored", dict(others=(dataclasses.replace(OTHER_LOW, status="D"),)), True, (), None),
    # Other results that cannot be judged: doubt, no comment (context_unreadable)
    ("other_range_unreadable", dict(others=(Obx(range="136-145 (M)"),)), False, ("context_unreadable",), None),
    ("other_range_unreadable_flag_n", dict(others=(Obx(range="136-145 (M)", flags="N"),)), True, (), None),
    ("other_value_unreadable", dict(others=(Obx(value="hemolyseret"),)), False, ("context_unreadable",), None),
    ("other_value_empty_with_range", dict(others=(Obx(value=""),)), False, ("context_unreadable",), None),
    ("other_range_unit_disagrees", dict(others=(Obx(range="136-145 µmol/L"),)), False, ("context_unreadable",), None),
    ("other_range_two_repetitions", dict(others=(Obx(range="136-145~1-2"),)), False, ("context_unreadable",), None),
    ("other_range_same_unit", dict(others=(Obx(range="136-145 mmol/L"),)), True, (), None),
    ("other_value_with_unit", dict(others=(Obx(value="140 mmol/L", vtype="ST"),)), True, (), None),
    (
        "other_value_with_other_unit",
        dict(others=(Obx(value="140 mg/dL", vtype="ST"),)),
        False,
        ("context_unreadable",),
        None,
    ),
    ("other_number_no_range_no_flag", dict(others=(Obx(range=""),)), True, (), None),
    # Ranges the old grammar could not read made these count as normal: now outside is outside.
    (
        "other_outside_bracket_range",
        dict(others=(Obx(value="130", range="[136;145]"),)),
        False,
        ("other_abnormal",),
        None,
    ),
    (
        "other_outside_joiner_range",
        dict(others=(Obx(value="150", range="136..145"),)),
        False,
        ("other_abnormal",),
        None,
    ),
    (
        "other_outside_prefixed_range",
        dict(others=(Obx(value="150", range="Ref: 136-145"),)),
        False,
        ("other_abnormal",),
        None,
    ),
    (
        "other_neutropenia_unit_range",
        dict(others=(Obx(code="751-8^Neutrophils^LN", value="0,9", units="10*9/L", range="1,5-7,5 x10E9/l"),)),
        False,
        ("other_abnormal",),
        None,
    ),
    (
        "other_outside_unit_value",
        dict(others=(Obx(code="1742-6^ALT^LN", value="88 U/L", vtype="ST", units="U/L", range="10-45"),)),
        False,
        ("other_abnormal",),
        None,
    ),
    # Text results
    (
        "other_text_no_flag",
        dict(others=(Obx(code="5778-6^Color^LN", vtype="ST", value="Rod", units="", range=""),)),
        False,
        ("context_unreadable",),
        None,
    ),
    (
        "other_text_normal",
        dict(others=(Obx(code="X^Hb-elfo^L", vtype="ST", value="Normal", units="", range=""),)),
        True,
        (),
        None,
    ),
    (
        "other_text_negativ",
        dict(others=(Obx(code="X^Test^L", vtype="TX", value="negativ.", units="", range=""),)),
        True,
        (),
        None,
    ),
    (
        "other_text_ikke_pavist",
        dict(
            charset="UNICODE UTF-8",
            others=(Obx(code="X^Test^L", vtype="FT", value="Ikke  påvist", units="", range=""),),
        ),
        True,
        (),
        None,
    ),
    (
        "other_coded_negative",
        dict(others=(Obx(code="X^Test^L", vtype="CWE", value="260385009^Negative^SCT", units="", range=""),)),
        True,
        (),
        None,
    ),
    (
        "other_coded_yes",
        dict(others=(Obx(code="X^Test^L", vtype="CWE", value="Y^Yes^HL70136", units="", range=""),)),
        False,
        ("context_unreadable",),
        None,
    ),
    (
        "other_coded_flag_n",
        dict(others=(Obx(code="X^Test^L", vtype="CE", value="LA18592-8^In range^LN", units="", range="", flags="N"),)),
        True,
        (),
        None,
    ),
    (
        "other_coded_flag_a",
        dict(others=(Obx(code="X^Test^L", vtype="CWE", value="10828004^Positive^SCT", units="", range="", flags="A"),)),
        False,
        ("other_abnormal",),
        None,
    ),
    (
        "other_text_matches_reference",
        dict(
            others=(
                Obx(code="X^Test^L", vtype="CWE", value="260415000^Not Detected^SCT", units="", range="Not Detected"),
            )
        ),
        True,
        (),
        None,
    ),
    (
        "other_text_differs_from_reference",
        dict(others=(Obx(code="X^Test^L", vtype="ST", value="Detected", units="", range="Not Detected"),)),
        False,
        ("context_unreadable",),
        None,
    ),
    (
        # A date is no finding (HL7 value type DT): it neither doubts nor vetoes.
        "other_date_result",
        dict(others=(Obx(code="X^Onset^L", vtype="DT", value="20240101", units="", range=""),)),
        True,
        (),
        None,
    ),
    (
        "other_embedded_report_is_doubt",
        dict(others=(Obx(code="X^Report^L", vtype="ED", value="LAB^AP^PDF^Base64^JVBERi0=", units="", range=""),)),
        False,
        ("context_unreadable",),
        None,
    ),
    (
        "other_pending_unreadable_is_pending",
        dict(others=(Obx(value="", status="P"),)),
        False,
        ("context_pending",),
        None,
    ),
    (
        "other_unreadable_and_abnormal",
        dict(others=(Obx(value="x"), OTHER_LOW)),
        False,
        ("other_abnormal", "context_unreadable"),
        None,
    ),
    (
        "other_b12_pg_ml_does_not_count",
        dict(others=(b12("2000", "pg/mL", code="2132-9^Cobalamin^LN", flags="H"),)),
        True,
        (),
        None,
    ),
    # Existing NTEs under the B12 OBX: the comment goes after them, NTE-1 continues.
    ("existing_ntes", dict(ntes=("Analysed at Aarhus", "Haemolysed sample: no effect")), True, (), None),
    ("existing_nte_ids_gap", dict(ntes=(("1", "first"), ("4", "fourth"))), True, (), None),
    # Two B12 OBX: each commented once.
    ("two_b12_both_commented", dict(others=(b12("2000", "pg/mL", code="2132-9^Cobalamin^LN"),)), True, (), None),
    # Framing
    ("lf_terminator", dict(term=b"\n"), True, (), None),
    ("crlf_terminator", dict(term=b"\r\n"), True, (), None),
    ("no_final_terminator", dict(final_term=False), True, (), None),
    ("crlf_no_final_terminator", dict(term=b"\r\n", final_term=False), True, (), None),
    ("z_segment_after", dict(zseg="ZLB|1|x^y~z|\\F\\"), True, (), None),
    ("odd_delimiters", dict(fs="!", enc="@*%$"), True, (), None),
    ("v2_3_truncation_char", dict(version="2.3", enc="^~\\&#"), True, (), None),
    ("v2_5_1_truncation_char", dict(version="2.5.1", enc="^~\\&#"), True, (), None),
    ("v2_7_truncation_char", dict(version="2.7", enc="^~\\&#"), True, (), None),
    ("unsupported_version_2_9", dict(version="2.9"), True, (), None),
    # Character sets
    ("latin1_danish", dict(charset="8859/1", patient_name="Ærøskøbing^Søren Åge"), True, (), None),
    ("utf8_danish", dict(charset="UNICODE UTF-8", patient_name="Ærøskøbing^Søren Åge"), True, (), None),
    ("msh18_empty_ascii", dict(charset=""), True, (), None),
    ("unsupported_charset", dict(charset="ISO IR87"), False, ("unsupported_charset",), None),
    # Message level
    ("not_oru", dict(msh9="ADT^A08^ADT_A01"), False, ("not_oru",), None),
    ("oru_r30_not_configured", dict(msh9="ORU^R30"), False, ("not_oru",), None),
    ("multiple_patients", dict(extra_pid=True), False, ("multiple_patients",), None),
    ("duplicate_encoding_chars", dict(enc="^^\\&"), False, ("malformed",), None),
]


def _params():
    return [pytest.param(kw, commented, reasons, figures, id=cid) for cid, kw, commented, reasons, figures in CASES]


def expected_commented(kw: dict) -> bytes:
    """The message as it must look after the comment: the comment NTE is
    written by the builder after the B12 OBX's own NTEs (and likewise after a
    second B12 OBX), with the next set ID."""
    charset = kw.get("charset", "")
    exp = dict(kw)
    ntes = tuple(kw.get("ntes", ()))
    ids = [int(n[0]) if isinstance(n, tuple) else i for i, n in enumerate(ntes, 1)]
    exp["ntes"] = ntes + (comment_nte(max([len(ntes), *ids]) + 1, charset),)
    others = []
    for o in kw.get("others", ()):
        if o.code.split("^")[0] in ("14685-2", "2132-9", "NPU01700"):
            o = dataclasses.replace(o, ntes=tuple(o.ntes) + (comment_nte(len(o.ntes) + 1, charset),))
        others.append(o)
    exp["others"] = tuple(others)
    return build(**exp)  # NTE rows of 3-tuples are written NTE|id|L|text|RE


def test_all_reason_codes_covered():
    from b12comment.core import decision

    covered = {r for _, _, _, reasons, _ in CASES for r in reasons}
    covered |= {"already_commented", "internal_error", "too_many_b12", "too_many_segments"}  # tested below
    covered |= {"other_abnormal_recent", "requisition_pending", "context_unavailable"}  # test_context.py
    covered |= {"context_unreadable_recent", "context_pending_recent"}  # test_real_feeds.py
    codes = {
        v
        for k, v in vars(decision).items()
        if k.isupper() and isinstance(v, str) and k not in ("RULE_VERSION",) and not k.startswith(("BLOCK_", "IN_"))
    }
    assert codes <= covered, codes - covered


@pytest.mark.parametrize("kw, commented, reasons, figures", _params())
def test_case(kw, commented, reasons, figures):
    message = build(**kw)
    out, decision = process(message, RULE)
    assert decision.commented is commented
    assert decision.reasons == reasons
    if figures is not None:
        first = decision.results[0]
        got = (first.age_years, first.value_pmol_l, first.limit_pmol_l, first.limit_source, first.decided_by)
        got = got[: len(figures)]
        assert tuple(g if f is ANY else f for g, f in zip(got, figures, strict=True)) == got
    if not commented:
        assert out == message
        return
    assert out == expected_commented(kw)
    # Every qualifying B12 result is commented, and exactly once.
    assert all(r.commented for r in decision.results)
    fs = kw.get("fs", "|").encode()
    added = [s for s in segments(out) if s.startswith(b"NTE") and s.endswith(fs + b"RE")]
    assert len(added) == len(decision.results)
    # Idempotent: the commented message comes back unchanged.
    again, second = process(out, RULE)
    assert again == out
    assert second.commented is False
    assert second.reasons == ("already_commented",)
    assert all(r.reasons == ("already_commented",) for r in second.results)


# ---------------------------------------------------------------------------
# Cases that need more than the table.


def test_commented_output_exact_bytes_spelled_out():
    """One case with the expected bytes written out by hand."""
    message = build(ntes=("Old note",))
    out, decision = process(message, RULE)
    assert decision.commented
    b12_line = b"OBX|1|NM|14685-2^Cobalamin (Vitamin B12)^LN||1500|pmol/L|||||F|||\rNTE|1|L|Old note\r"
    nte = b"NTE|2|L|" + ascii_da(DA).encode("ascii") + b"|RE\r"
    assert b12_line in message
    assert out == message.replace(b12_line, b12_line + nte)


@pytest.mark.parametrize("term", [b"\r", b"\n", b"\r\n"])
def test_inserted_segment_uses_message_terminator(term):
    message = build(term=term)
    out, decision = process(message, RULE)
    assert decision.commented
    pos = message.index(b"OBX|1|")
    line_end = message.index(term, pos) + len(term)
    nte = b"NTE|1|L|" + ascii_da(DA).encode("ascii") + b"|RE" + term
    assert out == message[:line_end] + nte + message[line_end:]


def test_no_final_terminator_stays_without():
    message = build(final_term=False, term=b"\r\n")
    assert not message.endswith(b"\n")
    out, _ = process(message, RULE)
    assert out == message + b"\r\nNTE|1|L|" + ascii_da(DA).encode("ascii") + b"|RE"


def test_mixed_terminators_use_the_b12_segment_terminator():
    message = build(term=b"\r")
    # the B12 OBX line alone ends with LF
    pos = message.index(b"OBX|1|")
    end = message.index(b"\r", pos)
    message = message[:end] + b"\n" + message[end + 1 :]
    out, decision = process(message, RULE)
    assert decision.commented
    nte = b"NTE|1|L|" + ascii_da(DA).encode("ascii") + b"|RE\n"
    assert out == message[: end + 1] + nte + message[end + 1 :]


def test_leading_whitespace_kept():
    message = b"\r\n  " + build()
    out, decision = process(message, RULE)
    assert decision.commented
    assert out.startswith(b"\r\n  MSH|")
    assert out == b"\r\n  " + expected_commented({})


def test_latin1_comment_bytes_are_single_byte_danish():
    message = build(charset="8859/1", patient_name="Ærø^Søren")
    assert b"\xc6r\xf8" in message
    out, decision = process(message, RULE)
    assert decision.commented
    assert b"forh\xf8jet" in out and b"b\xf8rn" in out and b"\xe5r " in out
    assert b"\xc3" not in out  # nothing UTF-8 encoded
    out.decode("latin-1")


def test_utf8_comment_bytes_are_multi_byte_danish():
    message = build(charset="UNICODE UTF-8", patient_name="Ærø^Søren")
    assert "Ærø".encode() in message
    out, decision = process(message, RULE)
    assert decision.commented
    assert "forhøjet".encode() in out and "børn".encode() in out
    assert out.decode("utf-8").count(DA) == 1


def test_msh18_empty_comment_is_pure_ascii_transliterated():
    text = "Æbler, øl og ål: ÆØÅ æøå"
    rule = RuleConfig(text_da=text)
    message = build(charset="")
    out, decision = process(message, rule)
    assert decision.commented
    assert out.startswith(message)
    inserted = out[len(message) :]
    assert inserted == b"NTE|1|L|Aebler, oel og aal: AeOeAa aeoeaa|RE\r"
    assert all(b < 0x80 for b in inserted)


def test_comment_text_with_delimiters_escaped_in_v27_message():
    rule = RuleConfig(text_da="a|b^c&d~e\\f#g\nh")
    message = build(version="2.7", enc="^~\\&#")
    out, decision = process(message, rule)
    assert decision.commented
    assert out == message + b"NTE|1|L|a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\P\\g\\.br\\h|RE\r"
    again, second = process(out, rule)
    assert again == out and second.reasons == ("already_commented",)


def test_english_comment_and_nte_fields_from_config():
    rule = RuleConfig(language="en", nte_source="O", nte_comment_type="")
    message = build()
    out, decision = process(message, rule)
    assert decision.commented
    assert out == message + b"NTE|1|O|" + EN.encode("ascii") + b"\r"


def test_already_commented_in_other_language_is_recognised():
    da_out, _ = process(build(), RULE)
    again, decision = process(da_out, RuleConfig(language="en"))
    assert again == da_out
    assert decision.reasons == ("already_commented",)


def test_order_status_not_stated_is_noted():
    _, decision = process(build(obr25="", group2=(OTHER_OK,)), RULE)
    assert decision.commented
    assert decision.notes == ("OBR-25 (order status) empty in 1 of 2 orders: OBX-11 statuses decide",)
    _, decision = process(build(group2=(OTHER_OK,)), RULE)
    assert decision.notes == ()


def test_order_statuses_are_the_sites():
    rule = dataclasses.replace(RULE, final_order_statuses=("F", "C", "A"))
    assert process(build(obr25="A"), rule)[1].commented
    rule = dataclasses.replace(RULE, cancelled_order_statuses=())
    assert process(build(extra_orders=("X",)), rule)[1].reasons == ("context_pending",)


def test_unsupported_version_read_as_251_with_note():
    _, decision = process(build(version="2.9"), RULE)
    assert decision.version == "2.9"
    assert any("2.9" in n and "2.5.1" in n for n in decision.notes)
    _, decision = process(build(version="2.5.1"), RULE)
    assert decision.notes == ()


def test_internal_error_returns_original_bytes():
    broken = RuleConfig(codes=None)  # type: ignore[arg-type]
    message = build()
    out, decision = process(message, broken)
    assert out == message
    assert decision.commented is False
    assert decision.reasons == ("internal_error",)
    assert decision.control_id == "CTRL0001"
    assert decision.detail


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"PID|1||x\r",
        b"MSH|^~",
        b"MSH\r",
        b"  \r\n",
        b"MSH|^^\\&|A|B\r",
    ],
    ids=["empty", "no_msh", "msh_too_short", "msh_no_fields", "blank", "duplicate_enc"],
)
def test_malformed_returned_unchanged(message):
    out, decision = process(message, RULE)
    assert out == message
    assert decision.reasons == ("malformed",)
    assert not decision.commented


def test_decision_holds_no_patient_data():
    message = build(patient_name="Hemmelig^Person", birth="20160315")
    _, decision = process(message, RULE)
    text = repr(decision.as_dict())
    assert "Hemmelig" not in text and "20160315" not in text and "0101169999" not in text


def test_commented_once_with_two_b12_and_each_after_its_own_obx():
    message = build(others=(OTHER_OK, b12("2000", "pg/mL", code="2132-9^Cobalamin^LN")))
    out, decision = process(message, RULE)
    assert decision.commented
    lines = out.split(b"\r")
    names = [line[:3] for line in lines if line]
    assert names[-5:] == [b"OBX", b"NTE", b"OBX", b"OBX", b"NTE"]
    assert [r.value_pmol_l for r in decision.results] == [1500.0, 1475.6]


def test_one_b12_commented_other_b12_not():
    """Second B12 OBX is preliminary: the first is still commented; reasons
    carry why the second was not."""
    message = build(others=(b12("2000", "pg/mL", code="2132-9^Cobalamin^LN", status="P"),))
    out, decision = process(message, RULE)
    assert decision.commented
    assert decision.reasons == ("status_not_final",)
    assert [r.commented for r in decision.results] == [True, False]
    assert out.count(b"NTE|") == 1


# ---------------------------------------------------------------------------
# Suspected core bugs, pinned (strict: they turn red when fixed, so the
# marker gets removed).


# Was a crash (AttributeError in FieldReader.components, internal_error) until
# the reader learned to place components beyond the data type's own.
@pytest.mark.parametrize(
    "kw",
    [
        dict(units="pmol/L^pmol/L^UCUM^^^^x"),  # OBX-6 CE with 7 components (2.5.1)
        dict(birth="20160315^D^x^y"),  # PID-7 TS with 4 components
        dict(obx14="20240110083000^x^y"),
        dict(collected="", spm17="20240110^x^y^z"),
    ],
    ids=["obx6", "pid7", "obx14", "spm17"],
)
def test_fields_with_extra_components_read_from_component_1(kw):
    message = build(**kw)
    out, decision = process(message, RULE)
    assert decision.reasons == ()
    assert out == expected_commented(kw)


# Was a false reassurance: '15,000' was refused as ambiguous (15.0 or 15000) and
# then treated as normal, although every reading is above 4.5-11
# (clinical-facts.md, Isolated: outside its own range is abnormal without a flag).
def test_ambiguous_other_value_outside_range_under_every_reading_is_abnormal():
    leukocytes = Obx(code="6690-2^Leukocytes^LN", value="15,000", units="10*9/L", range="4.5-11")
    message = build(others=(leukocytes,))
    out, decision = process(message, RULE)
    assert out == message
    assert decision.reasons == ("other_abnormal",)


@pytest.mark.parametrize(
    "value, rng, reasons",
    [
        ("1,500", "1-2", ("other_abnormal",)),  # 1.5 inside, 1500 outside: in doubt, no comment
        ("1,476", "0-2000", ()),  # both readings inside: isolated
        (">1,000", "0-2", ("other_abnormal",)),  # >1.0 or >1000: the second is certainly outside
    ],
    ids=["one_reading_outside", "both_inside", "censored_ambiguous"],
)
def test_ambiguous_other_value(value, rng, reasons):
    other = Obx(code="6690-2^Leukocytes^LN", vtype="ST", value=value, units="x", range=rng)
    _, decision = process(build(others=(other,)), RULE)
    assert decision.reasons == reasons


def test_other_result_at_an_exclusive_upper_bound_is_abnormal():
    """`<10` excludes 10: another result of exactly 10 is outside its range (no comment)."""
    msg = build(others=(Obx(code="1742-6^ALT^LN", value="10", units="U/L", range="<10"),))
    out, d = process(msg, RULE)
    assert out == msg
    assert d.reasons == ("other_abnormal",)
    ok = build(others=(Obx(code="1742-6^ALT^LN", value="9.9", units="U/L", range="<10"),))
    assert process(ok, RULE)[1].commented


def test_three_character_encoding_is_read_and_commented():
    msg = build().replace(b"MSH|^~\\&|", b"MSH|^~&|", 1)
    assert msg.startswith(b"MSH|^~&|")
    out, d = process(msg, RULE)
    assert d.commented, d
    assert out.count(b"\rNTE|1|L|") == 1


def test_too_many_b12_results_in_one_message_get_no_comment():
    """A message of thousands of B12 OBX is not one sample's report: no comment,
    and it is decided without reading them all (it used to take seconds)."""
    base = build()
    obx = [line for line in base.split(b"\r") if line.startswith(b"OBX|")][0]
    many = base.replace(obx + b"\r", (obx + b"\r") * 5000)
    out, d = process(many, RULE)
    assert out == many
    assert d.reasons == ("too_many_b12",) and d.detail == "5000 total-B12 results"
    ten = base.replace(obx + b"\r", (obx + b"\r") * 10)
    out, d = process(ten, RULE)
    assert d.commented and out.count(b"\rNTE|1|L|") == 10


def test_a_message_of_more_than_10000_segments_is_not_read():
    """A huge message (max_message_bytes raised) would cost seconds and many
    times its size to read: no comment, the message unchanged; at the bound
    it is read as any other."""
    base = build()
    sodium = b"OBX|9|NM|2951-2^Sodium^LN||140|mmol/L|136-145||||F\r"
    over = base + sodium * (10_001 - segment_count(base))
    assert segment_count(over) == 10_001
    out, d = process(over, RULE)
    assert out is over
    assert (d.commented, d.reasons, d.detail) == (False, ("too_many_segments",), "10001 segments (more than 10000)")
    at = base + sodium * (10_000 - segment_count(base))
    out, d = process(at, RULE)
    assert d.commented and out.count(b"\rNTE|1|L|") == 1


def test_segment_count_counts_every_kind_of_terminator():
    assert segment_count(b"MSH|^~\\&\rPID|1\r\nOBX|1\nOBX|2") == 3
    assert segment_count(b"MSH|^~\\&\r\r") == 2  # an empty line counts: an upper bound


# ---------------------------------------------------------------------------
# The site's lists for unflagged text results (normal_texts, ignored_codes).

SAMPLE_RECEIVED = Obx(code="PRV^Sample received^L", vtype="ST", value="Modtaget 10.01.2024", units="", range="")


def test_ignored_code_lifts_the_doubt_of_an_administrative_result():
    message = build(others=(SAMPLE_RECEIVED,))
    out, decision = process(message, RULE)
    assert (out, decision.reasons) == (message, ("context_unreadable",))
    rule = dataclasses.replace(RULE, ignored_codes=("PRV",))
    out, decision = process(message, rule)
    assert decision.commented and out == expected_commented(dict(others=(SAMPLE_RECEIVED,)))


def test_ignored_code_matches_the_alternate_identifier_and_never_hides_a_flag():
    alt = dataclasses.replace(SAMPLE_RECEIVED, code="X1^Sample received^L^PRV^^L")
    assert process(build(others=(alt,)), dataclasses.replace(RULE, ignored_codes=("PRV",)))[1].commented
    flagged = dataclasses.replace(SAMPLE_RECEIVED, flags="A")
    _, decision = process(build(others=(flagged,)), dataclasses.replace(RULE, ignored_codes=("PRV",)))
    assert decision.reasons == ("other_abnormal",)
    outside = Obx(code="PRV^x^L", value="150", range="136-145")
    _, decision = process(build(others=(outside,)), dataclasses.replace(RULE, ignored_codes=("PRV",)))
    assert decision.reasons == ("other_abnormal",)


def test_normal_texts_are_the_sites():
    text = Obx(code="X^Urine colour^L", vtype="ST", value="Lysegul", units="", range="")
    assert process(build(others=(text,)), RULE)[1].reasons == ("context_unreadable",)
    assert process(build(others=(text,)), dataclasses.replace(RULE, normal_texts=("lysegul",)))[1].commented
    negative = Obx(code="X^Test^L", vtype="ST", value="Negative", units="", range="")
    assert process(build(others=(negative,)), dataclasses.replace(RULE, normal_texts=()))[1].reasons == (
        "context_unreadable",
    )


@pytest.mark.parametrize(
    "obx, verdict",
    [
        (Obx(), "normal"),
        (OTHER_LOW, "abnormal"),
        (OTHER_OUTSIDE_NO_FLAG, "abnormal"),
        (Obx(range="136-145 (M)"), "unknown"),
        (Obx(value="?"), "unknown"),
        (Obx(vtype="ST", value="Rod", units="", range=""), "unknown"),
        (Obx(vtype="ST", value="Negativ", units="", range=""), "normal"),
    ],
)
def test_judge_value_is_the_one_verdict(obx, verdict):
    """judge_value() is what the message context (and a patient context) uses."""
    from b12comment.core.facts import read_facts
    from b12comment.core.segments import read_header
    from b12comment.core.verdict import judge_value

    message = build(others=(obx,))
    facts = read_facts(message, read_header(message), "latin-1", RULE)
    assert judge_value(facts.observations[1], RULE) == verdict


# ---------------------------------------------------------------------------
# Provenance: the text says it is automatic and names the rule version (NTE-2
# and NTE-4 are dropped on the way to FHIR and to the GP's MedCom report), and
# "already commented" holds for any earlier text or rule version.


def test_default_texts_end_with_the_provenance_marker():
    out, _ = process(build(charset="UNICODE UTF-8"), RULE)
    assert out.decode("utf-8").endswith("|" + DA + "|RE\r")
    out, _ = process(build(), RuleConfig(language="en"))
    assert out.endswith(("|" + EN + "|RE\r").encode("ascii"))


def test_rule_version_is_configurable_and_in_the_decision():
    rule = RuleConfig(rule_version="site-3")
    out, decision = process(build(), rule)
    assert decision.rule_version == "site-3"
    assert out.endswith(b"(Automatisk kommentar, b12comment regel site-3)|RE\r")
    assert process(build(), RULE)[1].rule_version == "b12-paed-2"
    assert process(build(birth="19700101"), rule)[1].rule_version == "site-3"  # also without a comment


@pytest.mark.parametrize(
    "earlier",
    [
        ascii_da(V1_DA),  # rule b12-paed-1, Danish
        V1_EN,  # rule b12-paed-1, English
        "Some other wording (Automatisk kommentar, b12comment regel b12-paed-7)",  # any text with the marker
        ascii_da(DA).replace("b12-paed-2", "site-1"),  # another rule version
    ],
    ids=["v1_da", "v1_en", "marker_other_text", "other_version"],
)
def test_already_commented_by_any_earlier_text_or_version(earlier):
    message = build(ntes=(("1", earlier, "RE"),))
    out, decision = process(message, RULE)
    assert out == message
    assert decision.reasons == ("already_commented",)


def test_changed_site_text_never_gives_a_second_comment():
    first = RuleConfig(text_da="Site text one (Automatisk kommentar, b12comment regel {rule_version})")
    commented, _ = process(build(), first)
    second = RuleConfig(text_da="Site text two (Automatisk kommentar, b12comment regel {rule_version})")
    again, decision = process(commented, second)
    assert again == commented and decision.reasons == ("already_commented",)


def test_earlier_texts_list_recognises_an_unmarked_old_text():
    old = "Our old text, without any marker."
    message = build(ntes=(("1", old, "RE"),))
    assert process(message, RULE)[1].commented
    out, decision = process(message, RuleConfig(earlier_texts=(old,)))
    assert out == message and decision.reasons == ("already_commented",)


def test_lab_note_without_marker_is_not_taken_for_the_comment():
    message = build(ntes=("B12 analysed twice",))
    assert process(message, RULE)[1].commented


@pytest.mark.parametrize(
    "kw, entered_by, nte_tail",
    [
        (dict(), "B12COMMENT^Automatic rule", b"|RE|B12COMMENT^Automatic rule\r"),
        (dict(fs="!", enc="@*%$"), "B12COMMENT^Automatic rule", b"!RE!B12COMMENT@Automatic rule\r"),
        (dict(), "b12comment", b"|RE|b12comment\r"),
    ],
    ids=["standard", "odd_delimiters", "one_component"],
)
def test_nte5_entered_by_from_config(kw, entered_by, nte_tail):
    rule = RuleConfig(nte_entered_by=entered_by)
    message = build(**kw)
    out, decision = process(message, rule)
    assert decision.commented
    fs = kw.get("fs", "|").encode()
    assert out == message + b"NTE" + fs + b"1" + fs + b"L" + fs + ascii_da(DA).encode("ascii") + nte_tail


def test_nte5_without_comment_type_keeps_nte4_empty():
    out, _ = process(build(), RuleConfig(nte_comment_type="", nte_entered_by="B12COMMENT"))
    assert out.endswith(b"b12-paed-2)||B12COMMENT\r")
