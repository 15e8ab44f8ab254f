import pytest

from cxrtriage.models.data import Sample, discover, patient_of, split_by_patient


@pytest.mark.parametrize(("name", "patient"), [
    ("person1000_bacteria_2931.jpeg", "p-person1000"),
    ("person1000_virus_1681.jpeg", "p-person1000"),
    ("NORMAL2-IM-1018-0001.jpeg", "n2-1018"),
    ("IM-0640-0001-0001.jpeg", "im-0640"),
    ("IM-0640-0001.jpeg", "im-0640"),
    ("scan42.png", "scan42"),
])
def test_patient_from_file_name(name, patient):
    assert patient_of(name) == patient


def test_split_never_puts_a_patient_in_two_splits():
    samples = [Sample(f"p{i}_{j}.png", "A" if i % 3 else "B", f"p{i}") for i in range(60) for j in range(3)]
    train, val, test = split_by_patient(samples, 0.2, seed=1, test_fraction=0.1)
    patients = [{s.patient for s in part} for part in (train, val, test)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not patients[a] & patients[b]
    assert len(train) + len(val) + len(test) == len(samples)
    assert {s.label for s in val} == {"A", "B"}, "validation is stratified by label"


def test_csv_with_patient_column(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "list.csv").write_text("path,label,patient\na.png,PNEUMONIA,77\n")
    [sample] = discover(tmp_path / "list.csv")
    assert (sample.label, sample.patient) == ("PNEUMONIA", "77")
    assert sample.path == str((tmp_path / "a.png").resolve())
