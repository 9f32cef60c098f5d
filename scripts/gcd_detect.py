"""Run the Giphy Celebrity Detector on a folder of images; write one JSON line per image.

    python scripts/gcd_detect.py --images DIR --resources GCD_DATA_DIR --out faces.jsonl [--cuda]

Runs in GCD's own environment (rules/envs/gcd.yaml: Python 3.6), so it imports nothing from pecker
and keeps to Python 3.6 syntax. It takes every image below --images (sub-folders included). Each line
is {"image": path relative to --images, "faces": results}, where results is
what GCD's FaceRecognizer.perform returns for the faces its detector found in the image, as GCD
returns it: [[[label, probability], ... top 5], is_known] per face cluster, labels as GCD's folder names.
pecker/evaluate/gcd.py reads the file in the main environment.
"""

import argparse
import json
import os


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", required=True)
    ap.add_argument("--resources", required=True, help="GCD's data folder (APP_DATA_DIR)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights-file", default=os.getenv("APP_RECOGNITION_WEIGHTS_FILE", "face_recognition/model.pt"))
    ap.add_argument("--face-size", type=int, default=224)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--cuda", action="store_true")
    args = ap.parse_args()

    from skimage import io as skio
    from model_training.helpers.face_recognizer import FaceRecognizer
    from model_training.helpers.labels import Labels
    from model_training.preprocessors.face_detection.face_detector import FaceDetector
    from model_training.utils import preprocess_image

    os.environ["APP_RECOGNITION_WEIGHTS_FILE"] = args.weights_file
    labels = Labels(resources_path=args.resources)
    detector = FaceDetector(args.resources, margin=args.margin, use_cuda=args.cuda)
    recognizer = FaceRecognizer(labels=labels, resources_path=args.resources, use_cuda=args.cuda)

    names = []  # paths relative to --images, "/"-separated (pecker writes TASK/NNN_SS.png)
    for folder, _, files in os.walk(args.images):
        rel = os.path.relpath(folder, args.images)
        for n in files:
            if n.lower().endswith((".png", ".jpg", ".jpeg")):
                names.append(n if rel == "." else "/".join(rel.split(os.sep) + [n]))
    names.sort()
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        for name in names:
            image = skio.imread(os.path.join(args.images, name))[..., :3]
            faces = [preprocess_image(face, args.face_size) for face, _ in detector.perform_single(image)]
            results = recognizer.perform(faces)
            out = [[[[str(label), float(p)] for label, p in top], float(known)] for top, known in results]
            f.write(json.dumps({"image": name, "faces": out}) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
