"""Label CSVs in the layouts people keep them: delimiters, encodings, image and split columns, text columns,
missing labels; and every error names the column, the first bad row and how many rows share it."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_causalvae.datasets.table import read_labels_csv


def write(tmp_path, text, name="labels.csv", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def nan_positions(t):
    return [tuple(int(i) for i in ij) for ij in torch.isnan(t.labels).nonzero()]


@pytest.mark.parametrize(
    "text, encoding",
    [
        ("file,a,b\nx.png,1,2\ny.png,3,4\n", "utf-8"),
        ("file;a;b\r\nx.png;1;2\r\ny.png;3;4\r\n", "utf-8"),  # semicolons, CRLF
        ("file\ta\tb\nx.png\t1\t2\ny.png\t3\t4\n", "utf-8"),  # tabs
        ("\ufefffile,a,b\r\nx.png,1,2\r\ny.png,3,4\r\n", "utf-8"),  # Excel's UTF-8 with BOM
        ("file;a;b\nx.png;1,0;2\ny.png;3;4,0\n", "cp1252"),  # decimal commas with semicolons
        (' "file" , "a" ,b\n"x.png", 1 ,2\n\n"y.png",3,4\n', "utf-8"),  # quotes, spaces, blank line
    ],
)
def test_delimiters_encodings_and_line_ends(tmp_path, text, encoding):
    t = read_labels_csv(write(tmp_path, text, encoding=encoding))
    assert t.concepts == ("a", "b") and t.image_column == "file"
    assert t.filenames == ["x.png", "y.png"]
    assert torch.equal(t.labels, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert len(t.sha256) == 64 and t.path.is_absolute()


def test_cp1252_file_names(tmp_path):
    t = read_labels_csv(write(tmp_path, "Datei;a\ncaf\u00e9.png;1\n", encoding="cp1252"), image_column="Datei")
    assert t.filenames == ["caf\u00e9.png"]


@pytest.mark.parametrize("name", ["file", "filename", "FileName", "path", "Path", "image", "IMAGE", "img", "image_path"])
def test_image_column_found_by_name(tmp_path, name):
    t = read_labels_csv(write(tmp_path, f"a,{name},b\n1,x.png,2\n"))
    assert t.image_column == name and t.filenames == ["x.png"] and t.concepts == ("a", "b")


def test_image_column_given_and_ambiguous(tmp_path):
    p = write(tmp_path, "file,image,a\nx.png,y.png,1\n")
    with pytest.raises(ValueError, match=r"several columns could name the image files: \['file', 'image'\]; .*--image-column"):
        read_labels_csv(p)
    assert read_labels_csv(p, image_column="image").filenames == ["y.png"]
    with pytest.raises(ValueError, match=r"has no column 'pic' \(the image column given\); its columns are \['file', 'image', 'a'\]"):
        read_labels_csv(p, image_column="pic")


def test_unnamed_column_of_file_names_is_pointed_out(tmp_path):
    p = write(tmp_path, "fname,a\nx.png,1\ny.png,2\n")
    with pytest.raises(ValueError, match=r"column 'fname' holds file names \('x.png'\) .*--image-column fname"):
        read_labels_csv(p)
    assert read_labels_csv(p, image_column="fname").filenames == ["x.png", "y.png"]


def test_text_columns_are_ignored_and_concepts_selected(tmp_path):
    p = write(tmp_path, "file,notes,a,id,b,c\nx.png,tall,1,u1,2,3\ny.png,,4,u2,5,6\n")
    t = read_labels_csv(p)
    assert t.concepts == ("a", "b", "c") and t.ignored == ("notes", "id")
    s = read_labels_csv(p, ["c", "a"])
    assert s.concepts == ("c", "a") and torch.equal(s.labels, torch.tensor([[3.0, 1.0], [6.0, 4.0]]))
    with pytest.raises(ValueError, match=r"non-numeric value 'tall' in column 'notes', data row 0 \(line 2\) \(1 of 2 rows"):
        read_labels_csv(p, ["a", "notes"])  # a text column named as a concept
    with pytest.raises(ValueError, match=r"non-numeric value 'x.png' in column 'file'"):
        read_labels_csv(p, ["file"])  # named as a concept, it is not taken as the image column


def test_missing_labels(tmp_path):
    p = write(tmp_path, "file,a,b,c\nw.png,1,,3\nx.png,nan,2,NA\ny.png, N/A ,null,None\nz.png,4,5,6\n")
    t = read_labels_csv(p)
    assert nan_positions(t) == [(0, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert t.missing_counts() == {"a": 2, "b": 2, "c": 2}
    assert float(t.labels[3, 2]) == 6.0


def test_column_without_any_label_is_refused(tmp_path):
    p = write(tmp_path, "file,a,b\nx.png,1,\ny.png,2,nan\n")
    with pytest.raises(ValueError, match=r"concept column 'b' has no label at all \(all 2 cells are missing\)"):
        read_labels_csv(p)
    assert read_labels_csv(p, ["a"]).concepts == ("a",)


@pytest.mark.parametrize(
    "text, match",
    [
        ("file,a,b\nx.png,1,2\ny.png,3,oops\nz.png,5,bad\n",
         r"non-numeric value 'oops' in column 'b', data row 1 \(line 3\) \(2 of 3 rows of that column are not numbers; "
         r"a missing label is an empty cell, nan or NA\)"),
        ("file,a\nx.png,inf\ny.png,-inf\n", r"value 'inf' in column 'a', data row 0 \(line 2\) is not finite in float32 \(2 of 2"),
        ("file,a\nx.png,1e40\n", r"value '1e40' in column 'a', data row 0 \(line 2\) is not finite in float32"),
        ("file,a\nx.png,1\n,2\n,3\n", r"empty file name in column 'file', data row 1 \(line 3\) \(2 of 3 rows have no file name\)"),
        ("file,a\nx.png,1\nx.png,2\nx.png,3\n",
         r"file name 'x.png' appears twice \(data rows 0 and 1\) \(2 of 3 rows repeat an earlier file name\)"),
        ("file,a\nx.png,1\ny.png\nz.png\n", r"line 3 \(data row 1\) has 1 cells but the header has 2 \(2 of 3 rows"),
        ("file,a,a\nx.png,1,2\n", r"duplicate column names \['a'\]"),
        ("file,,a\nx.png,1,2\n", "empty column name"),
        ("", "is empty"),
        ("file,a\n", "has a header but no data rows"),
        ("file,note\nx.png,hello\n", r"no numeric concept columns .*text columns \['note'\] are not labels"),
    ],
)
def test_errors_name_the_problem_and_count_the_rows(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_labels_csv(write(tmp_path, text))


def test_split_column(tmp_path):
    p = write(tmp_path, "file,a,Split\nw.png,1,train\nx.png,2,TEST\ny.png,3,valid\nz.png,4,training\n")
    t = read_labels_csv(p)
    assert t.concepts == ("a",) and t.split == ["train", "test", "test", "train"]
    bad = write(tmp_path, "file,a,split\nw.png,1,train\nx.png,2,later\ny.png,3,later\n", name="bad.csv")
    with pytest.raises(ValueError, match=r"split value 'later' in column 'split', data row 1 \(line 3\) .*\(2 of 3 rows share this\)"):
        read_labels_csv(bad)
    # a numeric column called split is a concept when named as one
    num = write(tmp_path, "file,split\nw.png,0.5\n", name="num.csv")
    assert read_labels_csv(num, ["split"]).split is None


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="label CSV file not found"):
        read_labels_csv(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="is a folder"):
        read_labels_csv(tmp_path)


def test_values_are_float32_with_nan(tmp_path):
    t = read_labels_csv(write(tmp_path, "a,b\n0.1,\n-2.5e3,7\n"))
    assert t.labels.dtype == torch.float32 and t.filenames is None
    assert math.isnan(float(t.labels[0, 1])) and float(t.labels[1, 0]) == -2500.0
