#!/usr/bin/env bash
# Turn the official ILSVRC2012 archives into the ImageFolder layout data/imagenet.py reads:
#   OUTPUT_DIR/train/<wnid>/*.JPEG   (1,281,167 images, 1000 classes)
#   OUTPUT_DIR/val/<wnid>/*.JPEG     (50,000 images)
# Idempotent: a finished split is marked with a .complete file and skipped; an interrupted or failed run picks up
# where it stopped (finished class folders are kept, unfinished ones redone). A damaged archive (tar reports an
# error) stops the script naming it (as does a full disk), and nothing is marked complete. Needs about 150 GB free beside the archives:
# the per-class tars of the training archive are unpacked one class at a time and deleted as they are done. Long
# steps print their progress every PROGRESS_INTERVAL seconds (default 60).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/prepare_imagenet.sh [OPTIONS] ARCHIVE_DIR [OUTPUT_DIR]

ARCHIVE_DIR must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) and the labels of
the validation images, as one of (first found wins):
  --val-labels FILE or ARCHIVE_DIR/val_labels.txt  lines "ILSVRC2012_val_00000001.JPEG n01751748"
  ARCHIVE_DIR/LOC_val_solution.csv                 Kaggle's ImageNet localization challenge file
  ARCHIVE_DIR/ILSVRC2012_devkit_t12.tar.gz         the official devkit (reading its meta.mat needs a Python
                                                   with scipy: see --python)
OUTPUT_DIR defaults to $IMAGENET_ROOT, else datasets/imagenet. Then train with IMAGENET_ROOT=OUTPUT_DIR (or
data.root=OUTPUT_DIR).

Options (each also read from the environment variable in brackets; `make prepare-imagenet ARGS="..."` passes them):
  --jobs N               class archives unpacked at once [JOBS] (default: nproc)
  --python COMMAND       the Python that reads meta.mat, a command split on spaces [PYTHON] (default: python3),
                         e.g. --python "uv run --with scipy python"
  --val-labels FILE      the validation labels file [VAL_LABELS]
  --progress-interval S  seconds between progress lines of long steps [PROGRESS_INTERVAL] (default: 60)
EOF
}

die() { echo "prepare_imagenet.sh: error: $*" >&2; exit 1; }

while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --jobs | --python | --val-labels | --progress-interval)
      [[ $# -ge 2 ]] || die "$1 needs a value (run with --help for usage)"
      case $1 in
        --jobs) JOBS=$2 ;;
        --python) PYTHON=$2 ;;
        --val-labels) VAL_LABELS=$2 ;;
        --progress-interval) PROGRESS_INTERVAL=$2 ;;
      esac
      shift 2 ;;
    *) die "unknown option $1 (run with --help for usage)" ;;
  esac
done
if [[ $# -lt 1 || $# -gt 2 ]]; then
  usage >&2
  exit 2
fi
ARCHIVE_DIR=$1
OUTPUT_DIR=${2:-${IMAGENET_ROOT:-datasets/imagenet}}
JOBS=${JOBS:-$(nproc)}
PROGRESS_INTERVAL=${PROGRESS_INTERVAL:-60}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs (JOBS) must be a positive integer, got '$JOBS'"
[[ $PROGRESS_INTERVAL =~ ^[1-9][0-9]*$ ]] || die "--progress-interval must be a positive integer, got '$PROGRESS_INTERVAL'"
# A command line, not only a path: "uv run --with scipy python" is a program and its three arguments.
read -r -a PYTHON_COMMAND <<<"${PYTHON:-python3}"
TRAIN_TAR=$ARCHIVE_DIR/ILSVRC2012_img_train.tar
VAL_TAR=$ARCHIVE_DIR/ILSVRC2012_img_val.tar
EXPECTED_TRAIN=1281167
EXPECTED_VAL=50000

[[ -d $ARCHIVE_DIR ]] || die "archive directory $ARCHIVE_DIR does not exist (run with --help for usage)"
for archive in "$TRAIN_TAR" "$VAL_TAR"; do
  [[ -f $archive ]] || die "$archive not found; download it from https://image-net.org (ILSVRC2012)"
done
mkdir -p "$OUTPUT_DIR/train" "$OUTPUT_DIR/val"

# Every PROGRESS_INTERVAL seconds until stop_progress: "LABEL: N[ of TOTAL] UNIT, RATE UNIT/s", N printed by
# COUNT_FUNCTION (cheap: it runs once a minute during steps of hours).
progress_pid=
start_progress() {
  local label=$1 total=$2 unit=$3 count_function=$4
  (
    # The sleep in the background, ended by the trap, and never holding the script's stdout or stderr open (a
    # caller reading them would wait for it).
    sleeper=
    trap '[[ -z $sleeper ]] || kill "$sleeper" 2>/dev/null; exit 0' TERM
    start=$SECONDS
    while true; do
      sleep "$PROGRESS_INTERVAL" </dev/null >/dev/null 2>&1 &
      sleeper=$!
      wait "$sleeper"
      count=$("$count_function")
      echo "$label: $count${total:+ of $total} $unit, $((count / (SECONDS - start > 0 ? SECONDS - start : 1))) $unit/s"
    done
  ) &
  progress_pid=$!
}
stop_progress() {
  if [[ -n $progress_pid ]]; then
    kill "$progress_pid" 2>/dev/null || true
    wait "$progress_pid" 2>/dev/null || true
    progress_pid=
  fi
}
val_labels_file=
trap 'stop_progress; rm -f "$val_labels_file"' EXIT

# One class: unpack its tar into a temporary folder, rename the folder into place (so a class folder, once there,
# is complete), delete the tar, and log its image count for the progress lines. A tar that fails (truncated,
# corrupt) is deleted with its partial folder, so the next run unpacks it again from the training archive.
extract_class() {
  local class_tar=$1 train_dir wnid
  train_dir=$(dirname "$class_tar")
  wnid=$(basename "$class_tar" .tar)
  if [[ ! -d $train_dir/$wnid ]]; then
    rm -rf "$train_dir/.tmp.$wnid"
    mkdir "$train_dir/.tmp.$wnid"
    if ! tar -xf "$class_tar" -C "$train_dir/.tmp.$wnid"; then
      rm -rf "$train_dir/.tmp.$wnid" "$class_tar"
      echo "prepare_imagenet.sh: error: class $wnid: its archive $wnid.tar inside ILSVRC2012_img_train.tar could" \
        "not be unpacked (tar's message above: a damaged archive, or a full disk)" >&2
      return 1
    fi
    find "$train_dir/.tmp.$wnid" -type f | wc -l >>"$train_dir/.extracted"
    mv "$train_dir/.tmp.$wnid" "$train_dir/$wnid" || return 1
  fi
  rm -f "$class_tar"
}
export -f extract_class

class_tars_mb() {
  find "$OUTPUT_DIR/train" -mindepth 1 -maxdepth 1 -name '*.tar' -printf '%s\n' | awk '{ s += $1 } END { print int(s / 1e6) }'
}
extracted_images() { awk '{ n += $1 } END { print n + 0 }' "$OUTPUT_DIR/train/.extracted"; }
staged_val_images() { find "$OUTPUT_DIR/val/.staging" -type f | wc -l; }
sorted_val_images() { find "$OUTPUT_DIR/val" -mindepth 2 -maxdepth 2 -type f -not -path '*/.staging/*' | wc -l; }

prepare_train() {
  local train_dir=$OUTPUT_DIR/train excluded
  if [[ -f $train_dir/.complete ]]; then
    echo "train: already prepared in $train_dir"
    return
  fi
  echo "train: unpacking $TRAIN_TAR into $train_dir"
  # Skip the tars of classes finished by an earlier, interrupted run.
  excluded=$train_dir/.finished_classes
  find "$train_dir" -mindepth 1 -maxdepth 1 -type d -name 'n*' -printf '%f.tar\n' >"$excluded"
  start_progress "train: class archives" "$(($(stat -c %s "$TRAIN_TAR") / 1000000))" MB class_tars_mb
  tar -xf "$TRAIN_TAR" -C "$train_dir" -X "$excluded" \
    || die "$TRAIN_TAR could not be unpacked (tar's message above): if damaged, download it again" \
      "(md5 1d675b47d978889d74fa0da5fadfb00e); if the disk is full, free space. Then re-run: finished classes are kept"
  stop_progress
  rm -f "$excluded"
  : >"$train_dir/.extracted"
  echo "train: unpacking $(find "$train_dir" -mindepth 1 -maxdepth 1 -name '*.tar' | wc -l) class archives ($JOBS at a time)"
  start_progress "train: unpacked" "" images extracted_images
  # `bash -c` runs extract_class in a new shell, which does not inherit set -e: its status is its own return.
  find "$train_dir" -mindepth 1 -maxdepth 1 -name '*.tar' -print0 \
    | xargs -0 -r -n 1 -P "$JOBS" bash -c 'extract_class "$0"' \
    || die "class archives could not be unpacked (named above); nothing was marked complete. For a damaged archive," \
      "download ILSVRC2012_img_train.tar again (md5 1d675b47d978889d74fa0da5fadfb00e); for a full disk, free space." \
      "Then re-run: the finished classes are kept, the others redone"
  stop_progress
  rm -f "$train_dir/.extracted"
  touch "$train_dir/.complete"
}

# Writes "ILSVRC2012_val_XXXXXXXX.JPEG wnid" lines to stdout from whichever label source is present.
val_labels() {
  if [[ -n ${VAL_LABELS:-} || -f $ARCHIVE_DIR/val_labels.txt ]]; then
    local labels=${VAL_LABELS:-$ARCHIVE_DIR/val_labels.txt}
    [[ -f $labels ]] || die "the validation labels file $labels (--val-labels, VAL_LABELS) does not exist"
    awk 'NF { print $1, $2 }' "$labels"
  elif [[ -f $ARCHIVE_DIR/LOC_val_solution.csv ]]; then
    # ImageId,PredictionString where PredictionString starts with the wnid of the first box.
    awk -F, 'NR > 1 && NF { split($2, boxes, " "); print $1 ".JPEG", boxes[1] }' "$ARCHIVE_DIR/LOC_val_solution.csv"
  elif [[ -f $ARCHIVE_DIR/ILSVRC2012_devkit_t12.tar.gz ]]; then
    "${PYTHON_COMMAND[@]}" -c 'import scipy.io' 2>/dev/null \
      || die "reading the devkit's meta.mat needs scipy, which '${PYTHON_COMMAND[*]}' cannot import:" \
        "rerun with --python \"uv run --with scipy python\" (or PYTHON=...), or provide val_labels.txt"
    "${PYTHON_COMMAND[@]}" - "$ARCHIVE_DIR/ILSVRC2012_devkit_t12.tar.gz" <<'PY'
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

# $1: the file of "image wnid" lines that val_labels wrote (read before the hours of training extraction, so a
# missing label source or scipy fails at once).
prepare_val() {
  local labels=$1 val_dir=$OUTPUT_DIR/val staging=$OUTPUT_DIR/val/.staging leftover
  echo "val: unpacking $VAL_TAR into $val_dir ($(wc -l <"$labels") labels)"
  mkdir -p "$staging"
  start_progress "val: unpacked" "$(wc -l <"$labels")" images staged_val_images
  tar -xf "$VAL_TAR" -C "$staging" \
    || die "$VAL_TAR could not be unpacked (tar's message above): if damaged, download it again" \
      "(md5 29b22e2961454d5413ddabcf34fc5622); if the disk is full, free space. Then re-run"
  stop_progress
  # One mkdir per class, then one mv per image; images moved by an interrupted run are simply absent here.
  cut -d' ' -f2 "$labels" | sort -u | (cd "$val_dir" && xargs mkdir -p)
  start_progress "val: sorted into class folders" "$(wc -l <"$labels")" images sorted_val_images
  while read -r image wnid; do
    if [[ -f $staging/$image ]]; then
      mv -f "$staging/$image" "$val_dir/$wnid/$image"
    fi
  done <"$labels"
  stop_progress
  leftover=$(find "$staging" -type f -print -quit)
  [[ -z $leftover ]] || die "validation images without a label, e.g. $leftover; check the label source"
  rmdir "$staging"
  touch "$val_dir/.complete"
}

count_images() { find "$1" -mindepth 2 -maxdepth 2 -type f -not -name '.*' | wc -l; }

if [[ -f $OUTPUT_DIR/val/.complete ]]; then
  echo "val: already prepared in $OUTPUT_DIR/val"
else
  val_labels_file=$(mktemp)
  val_labels >"$val_labels_file"
  [[ -s $val_labels_file ]] || die "the validation label source is empty"
fi
prepare_train
if [[ -n $val_labels_file ]]; then
  prepare_val "$val_labels_file"
fi
train_count=$(count_images "$OUTPUT_DIR/train")
val_count=$(count_images "$OUTPUT_DIR/val")
echo "done: $train_count training and $val_count validation images in $OUTPUT_DIR"
if [[ $train_count -ne $EXPECTED_TRAIN || $val_count -ne $EXPECTED_VAL ]]; then
  echo "prepare_imagenet.sh: warning: ILSVRC2012 has $EXPECTED_TRAIN training and $EXPECTED_VAL validation images;" \
    "these archives are not the complete official ones" >&2
fi
echo "train with: IMAGENET_ROOT=$OUTPUT_DIR (or data.root=$OUTPUT_DIR)"
