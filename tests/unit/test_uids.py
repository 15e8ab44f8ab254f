import pytest

from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.dicom.uids import derive_uid, is_valid_uid, require_uid
from cxrtriage.errors import InvalidInputError


@pytest.mark.parametrize(("value", "valid"), [
    ("1.2.840.10008.5.1.4.1.1.1", True),
    ("1.2.3", True),
    ("0.0", True),
    ("1", False),  # a UID has at least two components
    ("1.02.3", False),  # no leading zeros
    ("1.2.3.", False),
    ("1.2.3/../../etc", False),
    ("../1.2.3", False),
    ("1.2.3a", False),
    ("1." + "1" * 63, False),  # 65 characters
    ("", False),
    (None, False),
])
def test_uid_validation(value, valid):
    assert is_valid_uid(value) is valid


def test_invalid_uid_error_does_not_echo_the_value():
    with pytest.raises(InvalidInputError) as info:
        require_uid("DOE^JOHN", "StudyInstanceUID")
    assert "DOE" not in str(info.value) and "StudyInstanceUID" in str(info.value)


def test_invalid_uid_never_becomes_a_path(tmp_path):
    store = InstanceStore(tmp_path)
    with pytest.raises(InvalidInputError):
        store.path_for("1.2.3", "../../etc", "1.2.4")
    assert store.path_for("1.2.3", "1.2.4", "1.2.5") == tmp_path / "1.2.3" / "1.2.4" / "1.2.5.dcm"


def test_derived_uids_are_deterministic_and_valid():
    a, b = derive_uid("1.2.3", "x"), derive_uid("1.2.3", "x")
    assert a == b and is_valid_uid(a) and a != derive_uid("1.2.3", "y")
