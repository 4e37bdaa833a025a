"""A tiny `wikitext-103-v1.zip` in the official distribution format, for the end-to-end tests of the prepare step.

The official archive holds one folder, `wikitext-103/`, with `wiki.train.tokens`, `wiki.valid.tokens` and
`wiki.test.tokens`: UTF-8 text, one paragraph per line, each line starting with a space; articles begin with
` = Title = ` and sections with ` = = Section = = `, a blank line (a single space) around each heading; numbers
and hyphens are split as ` @-@ `, ` @,@ `, ` @.@ `; words rarer than 3 occurrences in the training text are `<unk>`
in every split. The texts below follow that layout (made up, a few hundred tokens), and every validation and test
word occurs in the training text, as in the real data.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

FOLDER = "wikitext-103"
MEMBERS = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}

_ARTICLE = (
    " \n"
    " = {title} = \n"
    " \n"
    " The {title} is a river in the north of the <unk> region . It is 1 @,@ 200 km long and flows into the sea "
    "near the city of <unk> . \n"
    " \n"
    " = = History = = \n"
    " \n"
    " In the early 19th century , the river was used for trade . A well @-@ known bridge was built in 1 @,@ 850 , "
    "and the city grew around it . The bridge is 3 @.@ 5 km long . \n"
    " \n"
    " = = Geography = = \n"
    " \n"
    " The river flows through forests and farms . Its water is used by the city , and the region around it is "
    "known for its <unk> . \n"
)
TRAIN_TEXT = "".join(_ARTICLE.format(title=title) for title in ("Alder River", "Birch River", "Cedar River"))
VALID_TEXT = (
    " \n = Cedar River = \n \n The river was used for trade , and the city grew around the bridge . \n"
    " \n = = History = = \n \n A bridge was built in the 19th century near the <unk> . \n"
)
TEST_TEXT = (
    " \n = Birch River = \n \n The Birch River is 3 @.@ 5 km long and flows through the region . \n"
    " \n = = Geography = = \n \n Its water is known for its trade . \n"
)
TEXTS = {"train": TRAIN_TEXT, "valid": VALID_TEXT, "test": TEST_TEXT}


def build_wikitext103_zip(
    path: Path, texts: dict[str, str | bytes] | None = None, compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    """Write `wikitext-103-v1.zip`-shaped `path` holding `texts` (str as UTF-8, bytes as they are; default
    `TEXTS`) as `wikitext-103/wiki.<split>.tokens`; return `path`."""
    texts = TEXTS if texts is None else texts
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr(f"{FOLDER}/", b"")  # the official archive lists its folder as an entry of its own
        for split, name in MEMBERS.items():
            text = texts[split]
            archive.writestr(f"{FOLDER}/{name}", text.encode("utf-8") if isinstance(text, str) else text)
    return path


def corrupt_member(path: Path, split: str) -> None:
    """Change one byte of the stored (uncompressed) member of `split`, keeping its recorded CRC-32: reading it
    then fails its CRC check, as a download damaged in transit does. Needs an archive built with ZIP_STORED."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{FOLDER}/{MEMBERS[split]}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError("corrupt_member needs a ZIP_STORED member, whose bytes are the text itself")
    data = bytearray(path.read_bytes())
    # The member's data follows its 30-byte local header, file name and extra field.
    name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    offset = start + info.file_size // 2
    data[offset] = ord("x") if data[offset] != ord("x") else ord("y")
    path.write_bytes(bytes(data))
