"""Tax ids never in clear: keyed tokens (and their rotation), the tokenised raw JSON of valid
events, the masked raw bytes of quarantined ones — total on any input."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollment.core.pii import TAX_ID_SHAPED, Keyring, is_token, mask_raw, shape, tokenise_json
from enrollment.ingest.shape import flatten, landed_schemas, quarantine_rows, tokenised
from enrollment.ingest.validation import validate_batch
from enrollment.simulator.generator import Simulator

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = Keyring.from_secret("t1", "unit-test-key-not-a-secret-0123456789")
# Distinctive tax ids in the markets' formats (US SSN, BR CPF, KR RRN, AR CUIT, CL RUT, MX RFC).
TAX_IDS = {
    "US": "219-09-9999",
    "BR": "529.982.247-25",
    "KR": "850101-1234567",
    "AR": "20-12345678-9",
    "CL": "12345678-K",
    "MX": "GODE561231GR8",
}


def digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def forms(value: str) -> set[str]:
    """The ways a tax id can be written: as given, bare
    digits, and the digits with any one separator."""
    d = digits(value)
    return {value, d} if len(d) >= 6 else {value}


def encode(event: dict) -> bytes:
    return json.dumps(event).encode()


def kafka_table(values: list[bytes]) -> pa.Table:
    n = len(values)
    return pa.table(
        {
            "kafka_partition": pa.array([0] * n, pa.int32()),
            "kafka_offset": pa.array(range(n), pa.int64()),
            "kafka_timestamp": pa.array([0] * n, pa.timestamp("ms", tz="UTC")),
            "kafka_key": pa.array([b""] * n, pa.binary()),
            "value": pa.array(values, pa.binary()),
        }
    )


# -- tokens ----------------------------------------------------------------------------------------
def test_tokens_are_keyed_normalised_and_tagged_with_their_key():
    token = KEYS.token("219-09-9999", "tax_id")
    assert is_token(token) and token.startswith("tok1:t1:")
    assert KEYS.token("219099999", "tax_id") == KEYS.token("219 09 9999", "tax_id") == token, (
        "separators are formatting"
    )
    assert KEYS.token("219-09-9998", "tax_id") != token
    assert KEYS.token("219099999", "partner_id") != KEYS.token("219099999", "tax_id"), (
        "kinds never collide"
    )
    assert (
        Keyring.from_secret("t1", "another-key-entirely-0123456789").token("219-09-9999", "tax_id")
        != token
    ), "keyed"
    assert "9999" not in token and not is_token("219-09-9999")
    with pytest.raises(ValueError):
        Keyring.from_secret("t1", "short")
    with pytest.raises(ValueError):
        Keyring.from_secret("bad id!", "x" * 32)
    assert "unit-test-key" not in repr(KEYS), "the key stays out of reprs"


def test_a_rotated_key_still_matches_the_tokens_made_before():
    old = KEYS.token("529.982.247-25", "tax_id")
    rotated = Keyring.from_secret(
        "t2", "the-new-key-after-rotation-98765", {"t1": "unit-test-key-not-a-secret-0123456789"}
    )
    new = rotated.token("529.982.247-25", "tax_id")
    assert new != old and new.startswith("tok1:t2:")
    assert rotated.matches("52998224725", "tax_id", old) and rotated.matches(
        "529.982.247-25", "tax_id", new
    )
    assert not rotated.matches("52998224726", "tax_id", old)
    assert set(rotated.tokens("529.982.247-25", "tax_id")) == {old, new}
    assert not KEYS.matches("529.982.247-25", "tax_id", new), (
        "a key id it does not know matches nothing"
    )
    assert not rotated.matches("529.982.247-25", "tax_id", "tok1:t9:" + "a" * 32)


def test_the_key_comes_from_the_environment():
    env = {
        "ENROLLMENT_PII_KEY_ID": "t2",
        "ENROLLMENT_PII_KEY": "the-new-key-after-rotation-98765",
        "ENROLLMENT_PII_RETIRED_KEYS": json.dumps({"t1": "unit-test-key-not-a-secret-0123456789"}),
    }
    keys = Keyring.from_env(env)
    assert keys.matches("219-09-9999", "tax_id", KEYS.token("219-09-9999", "tax_id"))
    with pytest.raises(RuntimeError):
        Keyring.from_env({})


# -- valid events: tax ids tokenised in the raw JSON, every other byte kept
# -------------------------
@pytest.mark.parametrize("country", sorted(TAX_IDS))
def test_an_enrollments_raw_json_carries_the_token_and_nothing_else_changes(country):
    event = Simulator(seed=3).event_for("partner.enrolled", country, 2, tax_id=TAX_IDS[country])
    event["payload"]["notes"] = {
        "tax_id": TAX_IDS[country],
        "tax\\u005fid": 1,
    }  # foreign fields travel in the raw event too
    raw = encode(event)
    out = tokenise_json(raw, KEYS)
    decoded = json.loads(out)
    token = KEYS.token(TAX_IDS[country], "tax_id")
    assert decoded["payload"]["tax_id"] == token and decoded["payload"]["notes"]["tax_id"] == token
    for form in forms(TAX_IDS[country]):
        assert form.encode() not in out
    decoded["payload"]["tax_id"] = decoded["payload"]["notes"]["tax_id"] = TAX_IDS[country]
    assert decoded == json.loads(raw), "only the tax ids changed"
    assert tokenise_json(out, KEYS) == out, "tokens are not tokenised again"


def test_land_tokenises_the_valid_rows_and_adds_their_token_column():
    sim = Simulator(seed=5)
    events = [
        sim.event_for("partner.enrolled", c, 2, tax_id=TAX_IDS[c]) for c in ("US", "BR", "KR")
    ]
    events.append(
        sim.event_for("partner.enrolled", "US", 1, tax_id="219099999")
    )  # the same SSN, other formatting
    events.append(sim.event_for("partner.enrolled", "DE", 2))  # no tax id in this market
    values = [encode(e) for e in events]
    result = validate_batch(values)
    assert result.quarantine.num_rows == 0, result.quarantine.column("reasons").to_pylist()
    messages, tokens = tokenised(result, kafka_table(values), KEYS)
    valid = flatten(result, messages, "b", tokens)
    assert (
        valid.schema.names.index("tax_id_token") == valid.schema.names.index("tax_id_present") + 1
    )
    rows = valid.to_pylist()
    assert [r["tax_id_token"] for r in rows] == [
        KEYS.token(TAX_IDS["US"], "tax_id"),
        KEYS.token(TAX_IDS["BR"], "tax_id"),
        KEYS.token(TAX_IDS["KR"], "tax_id"),
        KEYS.token(TAX_IDS["US"], "tax_id"),
        None,
    ]
    for r in rows:
        assert json.loads(r["event_json"])["payload"].get("tax_id") == r["tax_id_token"]
    text = valid.to_pandas().to_json()
    for value in TAX_IDS.values():
        for form in forms(value):
            assert form not in text
    assert "tax_id_token" in landed_schemas()[0].names


def test_a_tax_id_key_spelt_with_escapes_is_tokenised_too():
    out = tokenise_json(b'{"payload": {"\\u0074ax_id": "219-09-9999", "TAX_ID": 219099999}}', KEYS)
    token = KEYS.token("219099999", "tax_id")
    assert json.loads(out) == {"payload": {"tax_id": token, "TAX_ID": token}}


@SETTINGS
@given(st.binary(max_size=400))
def test_tokenising_any_bytes_never_raises(raw):
    assert isinstance(tokenise_json(raw, KEYS), bytes)
    assert isinstance(tokenise_json(b'{"tax_id":' + raw, KEYS), bytes)


# -- quarantined messages: masked by shape, still saying why
# ------------------------------------------
def test_masks_keep_the_shape():
    assert shape("219-09-9999") == "###-##-####"
    assert shape("GODE561231GR8") == "xxxx######xx#"
    assert shape("ana.lima@example.com") == "xxx.xxxx@xxxxxxx.xxx"
    assert shape("\\u0031\\u0032-3") == "##-#"


def test_quarantine_keeps_the_reasons_and_masks_the_values():
    sim = Simulator(seed=9)
    wrong = sim.event_for("partner.enrolled", "US", 2, tax_id="219-09-99999")  # a digit too many
    unknown = sim.event_for("partner.enrolled", "BR", 2, tax_id=TAX_IDS["BR"])
    unknown["schema_version"] = 9
    values = [
        encode(wrong),
        encode(unknown),
        b'{"payload": {"tax_id": "850101-1234567", "email": "kim@example.kr"',
        b"\xff SSN 219-09-9999 \xed\xa0\x80",
    ]
    result = validate_batch(values)
    q = quarantine_rows(result, kafka_table(values), "b", "NA")
    assert q.column("reasons").to_pylist() == [
        ",".join(r) for r in result.quarantine.column("reasons").to_pylist()
    ]
    assert "bad_format:payload.tax_id" in q.column("reasons").to_pylist()[0]
    assert "unknown_schema_version" in q.column("reasons").to_pylist()[1]
    raws = q.column("raw").to_pylist()
    assert json.loads(raws[0])["payload"]["tax_id"] == "###-##-#####", (
        "the operator sees the wrong shape"
    )
    assert json.loads(raws[1])["payload"]["tax_id"] == "###.###.###-##"
    assert (
        json.loads(raws[0])["event_id"] == wrong["event_id"]
        and json.loads(raws[0])["occurred_at"] == wrong["occurred_at"]
    )
    assert json.loads(raws[0])["payload"]["email"] != wrong["payload"]["email"]
    blob = b"".join(raws)
    for value in ("219-09-9999", "219-09-99999", TAX_IDS["BR"], "850101-1234567", "kim@example.kr"):
        for form in forms(value):
            assert form.encode() not in blob, form
    assert raws[3].startswith(b"\xff SSN ###-##-#### \xed\xa0\x80"), (
        "bytes that are not text kept byte for byte"
    )
    assert result.quarantine.column("raw").to_pylist() == values, (
        "the validator still sees the clear bytes"
    )


tax_ids = st.sampled_from(
    [*sorted(TAX_IDS.values()), "219099999", "52998224725", "8501011234567"]
) | st.from_regex(r"\d{3}-\d{2}-\d{4}", fullmatch=True)
sensitive_keys = st.sampled_from(["tax_id", "email", "phone", "date_of_birth"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(max_value=10**5)
    | st.text(alphabet="abcxyz -_.:", max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet="abcxyz_", max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@SETTINGS
@given(st.binary(max_size=300), st.binary(max_size=300), tax_ids)
def test_masking_any_bytes_never_raises_nor_keeps_a_tax_id(before, after, tax_id):
    raw = before + tax_id.encode() + after
    out = mask_raw(raw)
    assert isinstance(out, bytes)
    assert tax_id.encode() not in out and digits(tax_id).encode() not in out
    assert (
        not TAX_ID_SHAPED.search(out.decode("utf-8", "surrogateescape").replace('"', " "))
        or b'_id"' in raw
        or b'_at"' in raw
        or b'date"' in raw
    )
    assert mask_raw(before) is not None


@SETTINGS
@given(
    json_values,
    st.lists(
        st.tuples(sensitive_keys, tax_ids | st.integers(min_value=10**8, max_value=10**13)),
        min_size=1,
        max_size=4,
    ),
    st.randoms(),
)
def test_masking_any_json_keeps_its_structure_and_hides_sensitive_values(doc, secrets, rnd):
    def plant(node, key, value):
        dicts = []

        def walk(n):
            if isinstance(n, dict):
                dicts.append(n)
                for v in n.values():
                    walk(v)
            elif isinstance(n, list):
                for v in n:
                    walk(v)

        walk(node)
        rnd.choice(dicts)[key] = value

    root = {"doc": doc}
    for key, value in secrets:
        plant(root, key, value)
    raw = json.dumps(root, indent=rnd.choice([None, 1])).encode()
    out = mask_raw(raw)
    masked = json.loads(out)  # still JSON
    assert _keys(masked) == _keys(root), "the structure is kept"
    for _, value in secrets:
        for form in forms(str(value)):
            assert form.encode() not in out
    # Reasons are found on the clear bytes and quarantine_rows only masks what it writes.
    result = validate_batch([raw])
    q = quarantine_rows(result, kafka_table([raw]), "b", "NA")
    assert q.column("reasons").to_pylist() == [
        ",".join(r) for r in result.quarantine.column("reasons").to_pylist()
    ]
    assert q.column("raw").to_pylist() == [out]


def _keys(node) -> list:
    if isinstance(node, dict):
        return [(k, _keys(v)) for k, v in node.items()]
    if isinstance(node, list):
        return [_keys(v) for v in node]
    return None
