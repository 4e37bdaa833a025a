#!/usr/bin/env bash
# Turn the official ILSVRC2012 archives into the ImageFolder layout data/imagenet.py reads:
#   OUTPUT_DIR/train/<wnid>/*.JPEG   (1,281,167 images, 1000 classes)
#   OUTPUT_DIR/val/<wnid>/*.JPEG     (50,000 images)
# Idempotent: a finished split is marked with a .complete file and skipped; an interrupted run picks up where it
# stopped (finished class folders are kept, unfinished ones redone). Needs about 150 GB free beside the archives:
# the per-class tars of the training archive are unpacked one class at a time and deleted as they are done.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/prepare_imagenet.sh ARCHIVE_DIR [OUTPUT_DIR]

ARCHIVE_DIR must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) and the labels of
the validation images, as one of (first found wins):
  $VAL_LABELS or ARCHIVE_DIR/val_labels.txt  lines "ILSVRC2012_val_00000001.JPEG n01751748"
  ARCHIVE_DIR/LOC_val_solution.csv           Kaggle's ImageNet localization challenge file
  ARCHIVE_DIR/ILSVRC2012_devkit_t12.tar.gz   the official devkit (reading its meta.mat needs Python with
                                             scipy; set PYTHON, e.g. PYTHON="uv run --with scipy python")
OUTPUT_DIR defaults to $IMAGENET_ROOT, else datasets/imagenet. JOBS sets parallel extractions (default: nproc).
Then train with IMAGENET_ROOT=OUTPUT_DIR (or data.root=OUTPUT_DIR).
EOF
}

die() { echo "prepare_imagenet.sh: error: $*" >&2; exit 1; }

if [[ $# -lt 1 || $# -gt 2 || $1 == -h || $1 == --help ]]; then
  usage >&2
  [[ $# -ge 1 && ($1 == -h || $1 == --help) ]] && exit 0
  exit 2
fi
ARCHIVE_DIR=$1
OUTPUT_DIR=${2:-${IMAGENET_ROOT:-datasets/imagenet}}
JOBS=${JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
TRAIN_TAR=$ARCHIVE_DIR/ILSVRC2012_img_train.tar
VAL_TAR=$ARCHIVE_DIR/ILSVRC2012_img_val.tar
EXPECTED_TRAIN=1281167
EXPECTED_VAL=50000

[[ -d $ARCHIVE_DIR ]] || die "archive directory $ARCHIVE_DIR does not exist (run with --help for usage)"
for archive in "$TRAIN_TAR" "$VAL_TAR"; do
  [[ -f $archive ]] || die "$archive not found; download it from https://image-net.org (ILSVRC2012)"
done
mkdir -p "$OUTPUT_DIR/train" "$OUTPUT_DIR/val"

# One class: unpack its tar into a temporary folder, rename the folder into place (so a class folder, once there,
# is complete), delete the tar.
extract_class() {
  local class_tar=$1 train_dir wnid
  train_dir=$(dirname "$class_tar")
  wnid=$(basename "$class_tar" .tar)
  if [[ ! -d $train_dir/$wnid ]]; then
    rm -rf "$train_dir/.tmp.$wnid"
    mkdir "$train_dir/.tmp.$wnid"
    tar -xf "$class_tar" -C "$train_dir/.tmp.$wnid"
    mv "$train_dir/.tmp.$wnid" "$train_dir/$wnid"
  fi
  rm -f "$class_tar"
}
export -f extract_class

prepare_train() {
  local train_dir=$OUTPUT_DIR/train excluded
  if [[ -f $train_dir/.complete ]]; then
    echo "train: already prepared in $train_dir"
    return
  fi
  echo "train: unpacking $TRAIN_TAR into $train_dir"
  # Skip the tars of classes finished by an earlier, interrupted run.
  excluded=$(mktemp)
  find "$train_dir" -mindepth 1 -maxdepth 1 -type d -name 'n*' -printf '%f.tar\n' >"$excluded"
  tar -xf "$TRAIN_TAR" -C "$train_dir" -X "$excluded"
  rm -f "$excluded"
  find "$train_dir" -mindepth 1 -maxdepth 1 -name '*.tar' -print0 | xargs -0 -r -n 1 -P "$JOBS" bash -c 'extract_class "$0"'
  touch "$train_dir/.complete"
}

# Writes "ILSVRC2012_val_XXXXXXXX.JPEG wnid" lines to stdout from whichever label source is present.
val_labels() {
  if [[ -n ${VAL_LABELS:-} || -f $ARCHIVE_DIR/val_labels.txt ]]; then
    local labels=${VAL_LABELS:-$ARCHIVE_DIR/val_labels.txt}
    [[ -f $labels ]] || die "VAL_LABELS=$labels does not exist"
    awk 'NF { print $1, $2 }' "$labels"
  elif [[ -f $ARCHIVE_DIR/LOC_val_solution.csv ]]; then
    # ImageId,PredictionString where PredictionString starts with the wnid of the first box.
    awk -F, 'NR > 1 && NF { split($2, boxes, " "); print $1 ".JPEG", boxes[1] }' "$ARCHIVE_DIR/LOC_val_solution.csv"
  elif [[ -f $ARCHIVE_DIR/ILSVRC2012_devkit_t12.tar.gz ]]; then
    "$PYTHON" -c 'import scipy.io' 2>/dev/null \
      || die "reading the devkit's meta.mat needs scipy: rerun with PYTHON=\"uv run --with scipy python\", or provide val_labels.txt"
    "$PYTHON" - "$ARCHIVE_DIR/ILSVRC2012_devkit_t12.tar.gz" <<'PY'
import io
import sys
import tarfile

import scipy.io

with tarfile.open(sys.argv[1]) as devkit:
    meta = devkit.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
    truth = devkit.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read().split()
synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
# The 1000 leaf synsets are the classes; the ground truth lists their ILSVRC2012_ID per validation image.
id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
for number, class_id in enumerate(truth, start=1):
    print(f"ILSVRC2012_val_{number:08d}.JPEG {id_to_wnid[int(class_id)]}")
PY
  else
    die "no validation labels in $ARCHIVE_DIR: add val_labels.txt, LOC_val_solution.csv or ILSVRC2012_devkit_t12.tar.gz (see --help)"
  fi
}

prepare_val() {
  local val_dir=$OUTPUT_DIR/val staging=$OUTPUT_DIR/val/.staging labels leftover
  if [[ -f $val_dir/.complete ]]; then
    echo "val: already prepared in $val_dir"
    return
  fi
  labels=$(mktemp)
  val_labels >"$labels"
  [[ -s $labels ]] || die "the validation label source is empty"
  echo "val: unpacking $VAL_TAR into $val_dir ($(wc -l <"$labels") labels)"
  mkdir -p "$staging"
  tar -xf "$VAL_TAR" -C "$staging"
  # One mkdir per class, then one mv per image; images moved by an interrupted run are simply absent here.
  cut -d' ' -f2 "$labels" | sort -u | (cd "$val_dir" && xargs mkdir -p)
  while read -r image wnid; do
    if [[ -f $staging/$image ]]; then
      mv -f "$staging/$image" "$val_dir/$wnid/$image"
    fi
  done <"$labels"
  rm -f "$labels"
  leftover=$(find "$staging" -type f -print -quit)
  [[ -z $leftover ]] || die "validation images without a label, e.g. $leftover; check the label source"
  rmdir "$staging"
  touch "$val_dir/.complete"
}

count_images() { find "$1" -mindepth 2 -maxdepth 2 -type f -not -name '.*' | wc -l; }

prepare_train
prepare_val
train_count=$(count_images "$OUTPUT_DIR/train")
val_count=$(count_images "$OUTPUT_DIR/val")
echo "done: $train_count training and $val_count validation images in $OUTPUT_DIR"
if [[ $train_count -ne $EXPECTED_TRAIN || $val_count -ne $EXPECTED_VAL ]]; then
  echo "prepare_imagenet.sh: warning: ILSVRC2012 has $EXPECTED_TRAIN training and $EXPECTED_VAL validation images;" \
    "these archives are not the complete official ones" >&2
fi
echo "train with: IMAGENET_ROOT=$OUTPUT_DIR (or data.root=$OUTPUT_DIR)"
