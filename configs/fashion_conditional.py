"""The short-budget recipe, class-conditional: any folder with one subfolder per class.

    python main.py --config configs/fashion_conditional.py --config.data.path=/data/classes \
        --config.model.label_size=<number of subfolders>

It is configs/short_budget.py with labels from the first-level subfolders (class names sorted;
see docs/training.md, "Class-conditional training") and ten classes by default, as
Fashion-MNIST's. A folder of Fashion-MNIST with a subfolder per class comes from its Debian
package (`apt-get install dataset-fashion-mnist`), one class at a time:

    idx=/usr/share/datasets/fashion-mnist
    for c in 0 1 2 3 4 5 6 7 8 9; do
      python benchmarks/quality.py idx-to-png $idx/train-images-idx3-ubyte.gz \
          /tmp/fmnist_classes/$c --labels $idx/train-labels-idx1-ubyte.gz --classes $c
    done
"""

import ml_collections

from configs import short_budget


def get_config() -> ml_collections.ConfigDict:
    config = short_budget.get_config()
    config.data.labels = "subfolders"
    config.model.label_size = 10
    config.model.label_scale = 4.0
    config.loss.cond_fakes = False
    return config
