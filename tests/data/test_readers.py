"""Each reader on tiny valid samples, and every kind of bad input refused with file, row, column and fix."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from genrec.errors import DataError
from genrec.data.readers import (dataset_files, read_amazon_2014, read_amazon_2018, read_generic, read_movielens,
                            read_movielens_dat)

RATINGS = "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,3.5,90\n2,10,5.0,100\n"
MOVIES = 'movieId,title,genres\n10,"Matrix, The (1999)",Action\n20,Tom &amp; Jerry   (1992) ,Comedy\n'


def write(path, text: str | bytes):
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def movielens(tmp_path, ratings=RATINGS, movies=MOVIES):
    return write(tmp_path / "ratings.csv", ratings), write(tmp_path / "movies.csv", movies)


def test_movielens_reads_bom_crlf_quoted_commas_entities_and_whitespace(tmp_path):
    ratings = "\ufeff" + RATINGS.replace("\n", "\r\n")
    interactions, items = read_movielens(*movielens(tmp_path, ratings, MOVIES.replace("\n", "\r\n")))

    assert interactions.columns.tolist() == ["user_id", "item_id", "timestamp", "rating"]
    assert interactions["user_id"].tolist() == ["1", "1", "2"]  # file order, not sorted by time
    assert interactions["item_id"].tolist() == ["10", "20", "10"]
    assert interactions["timestamp"].dtype == np.int64 and interactions["timestamp"].tolist() == [100, 90, 100]
    assert interactions["rating"].dtype == np.float64 and interactions["rating"].tolist() == [4.0, 3.5, 5.0]
    assert items.to_dict("list") == {"item_id": ["10", "20"], "title": ["Matrix, The (1999)", "Tom & Jerry (1992)"]}
    assert isinstance(items["item_id"].iloc[0], str)


def test_generic_reads_with_and_without_rating(tmp_path):
    write(tmp_path / "items.csv", "item_id,title\na,Alpha\nb,  Beta&#39;s  \n")
    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu1,b,5\nu2,a,6\n")
    interactions, items = read_generic(tmp_path / "interactions.csv", tmp_path / "items.csv")
    assert interactions.columns.tolist() == ["user_id", "item_id", "timestamp"]
    assert items["title"].tolist() == ["Alpha", "Beta's"]

    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp,rating\nu1,b,5,1\n")
    interactions, _ = read_generic(tmp_path / "interactions.csv", tmp_path / "items.csv")
    assert interactions["rating"].tolist() == [1.0]


def test_movielens_dat_reads_latin1(tmp_path):
    write(tmp_path / "ratings.dat", b"1::2::5::978300760\r\n1::3::3::978302109\r\n")
    write(tmp_path / "movies.dat", b"2::Mis\xe9rables, Les (1995)::Drama\n3::Star Wars: Episode IV (1977)::Sci-Fi\n")
    interactions, items = read_movielens_dat(tmp_path / "ratings.dat", tmp_path / "movies.dat")
    assert interactions.to_dict("list") == {"user_id": ["1", "1"], "item_id": ["2", "3"],
                                            "timestamp": [978300760, 978302109], "rating": [5.0, 3.0]}
    assert items["title"].tolist() == ["Misérables, Les (1995)", "Star Wars: Episode IV (1977)"]


def review(user, asin, time, overall=5.0, **extra):
    return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": time, "overall": overall, **extra})


def test_amazon_2014_reads_gz_reviews_and_python_literal_meta(tmp_path):
    reviews = tmp_path / "reviews_Toys_5.json.gz"
    with gzip.open(reviews, "wt", encoding="utf-8") as f:
        f.write("\n".join([review("U1", "A1", 300, style={"x": 1}), "", review("U2", "A2", 200, 4.0)]) + "\n")
    meta = write(tmp_path / "meta_Toys.json", "\n".join([
        "{'asin': 'A1', 'title': \"Rubik's Cube &amp; Stand\", 'salesRank': {'Toys': 5}}",
        "{'asin': 'UNUSED', 'title': 'never reviewed'}",
        "{'title': 'LEGO  Set', 'asin': 'A2', 'related': {'also_bought': ['A1']}}",
    ]) + "\n")
    interactions, items = read_amazon_2014(reviews, meta)
    assert interactions.to_dict("list") == {"user_id": ["U1", "U2"], "item_id": ["A1", "A2"],
                                            "timestamp": [300, 200], "rating": [5.0, 4.0]}
    assert items.to_dict("list") == {"item_id": ["A1", "A2"], "title": ["Rubik's Cube & Stand", "LEGO Set"]}


def test_amazon_2014_meta_is_never_evaluated(tmp_path):
    reviews = write(tmp_path / "reviews_T_5.json", review("U1", "A1", 1) + "\n")
    meta = write(tmp_path / "meta_T.json", "{'asin': 'A1', 'title': __import__('os').getcwd()}\n")
    with pytest.raises(DataError, match=r"meta_T.json, row 1: malformed record"):
        read_amazon_2014(reviews, meta)


def test_amazon_2018_keeps_first_of_duplicated_meta_lines(tmp_path):
    reviews = write(tmp_path / "Toys_5.json", review("U1", "A1", 5) + "\n" + review("U1", "A2", 6) + "\n")
    meta = write(tmp_path / "meta_Toys.json", "\n".join(json.dumps(m) for m in [
        {"asin": "A1", "title": "First"}, {"asin": "A1", "title": "First"}, {"asin": "A2", "title": "Second"}]))
    _, items = read_amazon_2018(reviews, meta)
    assert items.to_dict("list") == {"item_id": ["A1", "A2"], "title": ["First", "Second"]}


def test_untitled_items_are_refused_or_dropped_when_asked(tmp_path):
    reviews = write(tmp_path / "Toys_5.json", "\n".join([review("U1", "A1", 5), review("U1", "A2", 6),
                                                          review("U2", "A3", 7), review("U2", "A1", 8)]))
    meta = write(tmp_path / "meta_Toys.json", '{"asin": "A1", "title": "Kept"}\n{"asin": "A2", "title": " "}\n')
    with pytest.raises(DataError, match=r"meta_Toys.json, row 2, column 'title': item 'A2' has no title"):
        read_amazon_2018(reviews, meta)

    for title in ("NaN", "null"):  # json.loads reads NaN as a float, null as None: neither is a title
        write(meta, '{"asin": "A1", "title": "Kept"}\n{"asin": "A2", "title": %s}\n' % title)
        with pytest.raises(DataError, match="item 'A2' has no title"):
            read_amazon_2018(reviews, meta)

    interactions, items = read_amazon_2018(reviews, meta, drop_untitled=True)
    assert items["item_id"].tolist() == ["A1"]
    assert interactions["item_id"].tolist() == ["A1", "A1"]  # A2 untitled, A3 missing from the metadata


BAD_CSV = [  # (ratings.csv, movies.csv, file, row, column, message)
    ("userId,movieId,timestamp\n1,10,5\n", MOVIES, "ratings.csv", 1, "rating", "missing column"),
    ("userId,movieId,rating,timestamp\n1,10,4,100\n1,10,4,yesterday\n", MOVIES, "ratings.csv", 3, "timestamp",
     "'yesterday' is not an integer"),
    ("userId,movieId,rating,timestamp\n1,10,4,100\n1,10,4,-1\n", MOVIES, "ratings.csv", 3, "timestamp",
     "negative timestamp"),
    ("userId,movieId,rating,timestamp\n1,10,4,\n", MOVIES, "ratings.csv", 2, "timestamp", "missing timestamp"),
    ("userId,movieId,rating,timestamp\n1,10,good,5\n", MOVIES, "ratings.csv", 2, "rating", "is not a number"),
    ("userId,movieId,rating,timestamp\n1,10,4,5\n2,30,4,5\n", MOVIES, "ratings.csv", 3, "movieId",
     "item '30' is not in movies.csv"),
    (RATINGS, "movieId,title,genres\n10,,Action\n20,x,y\n", "movies.csv", 2, "title", "has no title"),
    (RATINGS, "movieId,title,genres\n10,a,Action\n20,x,y\n10,b,z\n", "movies.csv", 4, "movieId",
     "duplicated item id '10'"),
    ("userId,movieId,rating,timestamp\n1,10,4,5\n1,10,4,5,extra\n", MOVIES, "ratings.csv", 3, None,
     "5 fields where the header has 4"),
    ("userId,movieId,rating,timestamp\n1,10,4,5\n", "movieId,title,genres\n10,Caf\xe9,x\n20,x,y\n".encode("latin-1"),
     "movies.csv", 2, None, "not utf-8"),
]


@pytest.mark.parametrize("ratings, movies, file, row, column, message", BAD_CSV,
                         ids=[case[-1].split()[-1] if case[-1] else "x" for case in BAD_CSV])
def test_movielens_refuses_bad_input_naming_file_row_column(tmp_path, ratings, movies, file, row, column, message):
    with pytest.raises(DataError) as caught:
        read_movielens(*movielens(tmp_path, ratings, movies))
    err = caught.value
    assert err.path.name == file and err.row == row and err.fix
    assert column is None or err.column == column
    assert message.lower() in str(err).lower()


BAD_JSON = [  # (reviews lines, meta lines, file, row, column, message)
    ([review("U1", "A1", 5), '{"reviewerID": "U2", "asin": '], ["{'asin': 'A1', 'title': 'T'}"],
     "reviews_T_5.json", 2, None, "malformed record"),
    ([review("U1", "A1", 5), json.dumps({"reviewerID": "U2", "asin": "A1", "overall": 1.0})],
     ["{'asin': 'A1', 'title': 'T'}"], "reviews_T_5.json", 2, "unixReviewTime", "missing field"),
    ([review("U1", "A1", "2014-01-01")], ["{'asin': 'A1', 'title': 'T'}"], "reviews_T_5.json", 1,
     "unixReviewTime", "is not an integer"),
    ([review("U1", "A1", -5)], ["{'asin': 'A1', 'title': 'T'}"], "reviews_T_5.json", 1, "unixReviewTime",
     "negative timestamp"),
    ([review("U1", "A1", 5), review("U1", "A9", 6)], ["{'asin': 'A1', 'title': 'T'}"], "reviews_T_5.json", 2,
     "asin", "item 'A9' is not in meta_T.json"),
    ([review("U1", "A1", 5)], ["{'asin': 'A1'}"], "meta_T.json", 1, "title", "has no title"),
]


@pytest.mark.parametrize("reviews, meta, file, row, column, message", BAD_JSON,
                         ids=[case[-1].replace(" ", "-") for case in BAD_JSON])
def test_amazon_2014_refuses_bad_input_naming_file_line_column(tmp_path, reviews, meta, file, row, column, message):
    reviews_path = write(tmp_path / "reviews_T_5.json", "\n".join(reviews) + "\n")
    meta_path = write(tmp_path / "meta_T.json", "\n".join(meta) + "\n")
    with pytest.raises(DataError) as caught:
        read_amazon_2014(reviews_path, meta_path)
    err = caught.value
    assert (err.path.name, err.row, err.column) == (file, row, column) and err.fix
    assert message in str(err)


def test_amazon_refuses_non_utf8_line(tmp_path):
    reviews = write(tmp_path / "T_5.json", (review("U1", "A1", 5) + "\n").encode() + b'{"reviewerID": "\xff"}\n')
    meta = write(tmp_path / "meta_T.json", '{"asin": "A1", "title": "T"}\n')
    with pytest.raises(DataError, match=r"T_5.json, row 2: not utf-8 \(byte 0xff"):
        read_amazon_2018(reviews, meta)


def test_movielens_dat_refuses_malformed_line(tmp_path):
    write(tmp_path / "ratings.dat", "1::2::5::978300760\n1::2::5\n")
    write(tmp_path / "movies.dat", "2::Heat (1995)::Action\n")
    with pytest.raises(DataError, match=r"ratings.dat, row 2: 3 fields where the header has 4"):
        read_movielens_dat(tmp_path / "ratings.dat", tmp_path / "movies.dat")


def test_dataset_files_detects_each_format(tmp_path):
    assert dataset_files(tmp_path / "absent") is None
    assert dataset_files(tmp_path) is None
    movielens(tmp_path)
    assert dataset_files(tmp_path) == ("movielens", tmp_path / "ratings.csv", tmp_path / "movies.csv")
    assert dataset_files(tmp_path, "generic") is None

    amazon = tmp_path / "amazon"
    amazon.mkdir()
    write(amazon / "meta_Toys.json.gz", b"")
    write(amazon / "reviews_Toys_5.json.gz", b"")
    assert dataset_files(amazon) == ("amazon-2014", amazon / "reviews_Toys_5.json.gz", amazon / "meta_Toys.json.gz")
    (amazon / "reviews_Toys_5.json.gz").rename(amazon / "Toys_5.json.gz")
    assert dataset_files(amazon)[0] == "amazon-2018"
    write(amazon / "Beauty_5.json", b"")
    with pytest.raises(DataError, match="one reviews file and one meta_"):
        dataset_files(amazon)


@pytest.mark.parametrize("rows, row, column, message", [
    ("u1,a,5,\n", 2, "rating", "missing or non-finite rating"),
    ("u1,a,5,1\n,a,6,1\n", 3, "user_id", "empty user id"),
])
def test_generic_refuses_missing_values(tmp_path, rows, row, column, message):
    write(tmp_path / "items.csv", "item_id,title\na,Alpha\n")
    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp,rating\n" + rows)
    with pytest.raises(DataError) as caught:
        read_generic(tmp_path / "interactions.csv", tmp_path / "items.csv")
    assert (caught.value.row, caught.value.column) == (row, column) and message in str(caught.value)


def test_every_reader_is_an_ingest_format_and_back():
    """A new reader is one entry of READERS; `ingest.format` must name exactly those (plus auto)."""
    import typing

    from genrec.config.values import IngestFormat
    from genrec.data.readers import CSV_FILES, READERS

    assert set(typing.get_args(IngestFormat)) == {"auto", *READERS}
    assert set(CSV_FILES) <= set(READERS)
