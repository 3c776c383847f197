"""How studies are dealt out: held-out sets, hospitals (style / label / iid), train/val/test.

- ``style``: sites differ in how they write. Reports are embedded by their phrasing (TF-IDF of
  word 2-3-grams, reduced by truncated SVD) and clustered with a size-balanced spherical k-means,
  so each simulated hospital gets the studies of a few radiologists' templates.
- ``label``: sites differ in what they see. For each stratum (the study's rarest finding category)
  site shares are drawn from Dirichlet(alpha); smaller alpha means stronger label skew.
- ``iid``: a uniform random deal.

Stratification (held-out sets, train/val/test) is by the rarest finding category of each study,
with a random offset per stratum so that even strata of one or two studies land in each split with
the right probability.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fedmrg.errors import DataError


def stratum_keys(categories: Sequence[Sequence[str]]) -> list[str]:
    """Each study's stratum: its rarest category across the corpus (``normal`` for none)."""
    frequency = Counter(c for cats in categories for c in cats)
    return [min(cats, key=lambda c: (frequency[c], c)) if cats else "normal" for cats in categories]


def stratified_split(
    indices: Sequence[int], keys: Sequence[str], fractions: Sequence[float], rng: np.random.Generator
) -> list[list[int]]:
    """Split ``indices`` into ``len(fractions)`` parts, proportionally within each stratum.

    ``keys[i]`` is the stratum of study ``i`` (indexed by the values in ``indices``).
    """
    bounds = np.cumsum(fractions) / np.sum(fractions)
    parts: list[list[int]] = [[] for _ in fractions]
    by_key: dict[str, list[int]] = {}
    for index in indices:
        by_key.setdefault(keys[index], []).append(index)
    for key in sorted(by_key):
        members = list(rng.permutation(by_key[key]))
        offset = rng.random()
        for rank, index in enumerate(members):
            position = (rank + offset) / len(members)
            part = min(int(np.searchsorted(bounds, position, side="right")), len(fractions) - 1)
            parts[part].append(int(index))
    return [sorted(p) for p in parts]


def iid_partition(n_items: int, n_sites: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random sites of (near) equal size."""
    sites = np.arange(n_items) % n_sites
    return rng.permutation(sites)


def label_partition(
    keys: Sequence[str], n_sites: int, alpha: float, rng: np.random.Generator, min_share: float = 0.5
) -> np.ndarray:
    """Dirichlet label skew: per stratum, site shares ~ Dirichlet(alpha).

    Draws are repeated until every site holds at least ``min_share`` of an equal share (a site
    with a handful of studies cannot train); fails with a clear error if that never happens.
    """
    n_items = len(keys)
    minimum = max(1, int(min_share * n_items / n_sites))
    by_key: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    for _ in range(200):
        sites = np.empty(n_items, dtype=int)
        for key in sorted(by_key):
            members = rng.permutation(by_key[key])
            shares = rng.dirichlet(np.full(n_sites, alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                sites[chunk] = site
        if np.bincount(sites, minlength=n_sites).min() >= minimum:
            return sites
    raise DataError(
        f"partition=label: could not give each of {n_sites} sites at least {minimum} of {n_items} studies "
        f"with dirichlet_alpha={alpha}; use a larger alpha, fewer sites or more studies"
    )


def style_partition(
    texts: Sequence[str], n_sites: int, seed: int, slack: float = 0.25
) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Cluster reports by phrasing into ``n_sites`` groups of balanced size.

    Returns the site of each report and, per site, the phrases that set it apart most (for
    benchmark.json and the preview). Sizes stay within ``(1 +- slack)`` of an equal share.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    if n_sites == 1:
        return np.zeros(len(texts), dtype=int), {0: []}
    vectorizer = TfidfVectorizer(ngram_range=(2, 3), min_df=min(3, len(texts)), sublinear_tf=True, max_features=30000)
    try:
        tfidf = vectorizer.fit_transform(texts)
    except ValueError:  # too few or too uniform texts for n-grams
        raise DataError(f"partition=style: {len(texts)} reports are too few or too alike to cluster; use iid") from None
    n_components = max(1, min(64, tfidf.shape[1] - 1, len(texts) - 1))
    embedding = TruncatedSVD(n_components=n_components, random_state=seed).fit_transform(tfidf)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True) + 1e-12
    sites = balanced_kmeans(embedding, n_sites, seed, slack)
    return sites, _distinctive_phrases(tfidf, sites, vectorizer.get_feature_names_out())


def balanced_kmeans(points: np.ndarray, k: int, seed: int, slack: float = 0.25, iterations: int = 20) -> np.ndarray:
    """Spherical k-means whose cluster sizes stay in ``[(1-slack), (1+slack)] * n/k``.

    Each iteration assigns points greedily, most confident first, to the nearest centroid that
    still has room, then tops up clusters below the floor with the points closest to them.
    """
    from sklearn.cluster import KMeans

    n = len(points)
    if n < k:
        raise DataError(f"cannot deal {n} studies to {k} sites")
    low, high = math.floor(n / k * (1 - slack)), math.ceil(n / k * (1 + slack))
    centroids = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(points).cluster_centers_
    labels = np.full(n, -1)
    for _ in range(iterations):
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
        similarity = points @ centroids.T
        new_labels = _capacity_assign(similarity, high)
        _top_up(new_labels, similarity, low)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        centroids = np.stack([points[labels == c].mean(axis=0) for c in range(k)])
    return labels


def _capacity_assign(similarity: np.ndarray, capacity: int) -> np.ndarray:
    ranked = np.sort(similarity, axis=1)
    margin = ranked[:, -1] - ranked[:, -2]
    labels = np.full(len(similarity), -1)
    room = np.full(similarity.shape[1], capacity)
    for point in np.argsort(-margin, kind="stable"):
        for cluster in np.argsort(-similarity[point], kind="stable"):
            if room[cluster] > 0:
                labels[point] = cluster
                room[cluster] -= 1
                break
    return labels


def _top_up(labels: np.ndarray, similarity: np.ndarray, floor: int) -> None:
    k = similarity.shape[1]
    for cluster in range(k):
        while (deficit := floor - int(np.sum(labels == cluster))) > 0:
            sizes = np.bincount(labels, minlength=k)
            donors = np.flatnonzero((sizes[labels] > floor) & (labels != cluster))
            if donors.size == 0:
                return
            # move the donor points that lose least by joining this cluster
            loss = similarity[donors, labels[donors]] - similarity[donors, cluster]
            take = donors[np.argsort(loss, kind="stable")[:deficit]]
            labels[take] = cluster


def _distinctive_phrases(tfidf, sites: np.ndarray, names: np.ndarray, top: int = 5) -> dict[int, list[str]]:
    overall = np.asarray(tfidf.mean(axis=0)).ravel()
    phrases = {}
    for site in np.unique(sites):
        lift = np.asarray(tfidf[sites == site].mean(axis=0)).ravel() - overall
        phrases[int(site)] = [str(names[i]) for i in np.argsort(-lift)[:top]]
    return phrases


def assign_sites(
    kind: str, texts: Sequence[str], keys: Sequence[str], n_sites: int, seed: int, alpha: float
) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Site index per study for ``kind`` in style | label | iid, and per-site distinctive phrases."""
    rng = np.random.default_rng([seed, 0xB0A])
    if kind == "style":
        return style_partition(texts, n_sites, seed)
    if kind == "label":
        return label_partition(keys, n_sites, alpha, rng), {}
    if kind == "iid":
        return iid_partition(len(texts), n_sites, rng), {}
    raise DataError(f"unknown partition '{kind}' (expected style, label or iid)")
