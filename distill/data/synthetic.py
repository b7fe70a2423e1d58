"""A deterministic synthetic BEIR dataset, so ``distill demo`` runs with no download.

Every text is composed here from word lists and sentence templates written for distill;
nothing is copied from an existing collection. A *topic* pairs a factor with an outcome
("coffee" and "sleep"); each of its documents discusses one *facet* of that pair (risks,
timing, children, ...). A query asks about one facet of one topic:

- relevance 2: the topic's documents on the query's facet,
- relevance 1: the topic's documents on its other facets,
- unjudged: everything else.

The dataset is built to be a real reranking problem. Every concept has a small group of
synonyms and each text picks its own, so a query often shares no word with the document
that answers it ("risks of caffeine for slumber" against "the dangers of coffee for
rest"). Topics share factors and outcomes, every facet reuses the same facet words
across topics, and some documents mention another factor and outcome in passing, so
lexical distractors abound. BM25 stays useful but imperfect; a model that knows English
synonyms can do better.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.core.errors import ConfigError
from distill.core.io import atomic_dir
from distill.core.manifest import write_manifest

KIND = "synthetic-beir"  # the manifest's kind: what a rerun may replace

# Each tuple is one concept; its members are interchangeable names for it.
FACTORS: tuple[tuple[str, ...], ...] = (
    ("coffee", "caffeine", "espresso"),
    ("exercise", "physical activity", "working out"),
    ("sugar", "sweets", "sugary food"),
    ("alcohol", "drinking", "liquor"),
    ("smoking", "tobacco", "cigarette use"),
    ("screen time", "smartphone use", "phone use"),
    ("noise", "loud sound", "din"),
    ("stress", "anxiety", "tension"),
    ("sunlight", "sun exposure", "daylight"),
    ("salt", "sodium", "salty food"),
    ("air pollution", "smog", "dirty air"),
    ("meditation", "mindfulness", "quiet reflection"),
    ("music", "songs", "melodies"),
    ("cold weather", "low temperatures", "winter chill"),
    ("fasting", "meal skipping", "food restriction"),
    ("drinking water", "hydration", "fluid intake"),
    ("video games", "gaming", "computer games"),
    ("red meat", "beef", "steak"),
    ("night shifts", "shift work", "night work"),
    ("walking", "strolling", "daily walks"),
)

OUTCOMES: tuple[tuple[str, ...], ...] = (
    ("sleep", "slumber", "rest"),
    ("heart health", "cardiac health", "the cardiovascular system"),
    ("memory", "recall", "the ability to remember"),
    ("body weight", "body mass", "the waistline"),
    ("mood", "emotional wellbeing", "happiness"),
    ("blood pressure", "hypertension", "arterial pressure"),
    ("teeth", "dental health", "tooth enamel"),
    ("skin", "complexion", "the skin barrier"),
    ("concentration", "focus", "attention span"),
    ("the immune system", "immunity", "resistance to infection"),
    ("bone strength", "bone density", "the skeleton"),
    ("lung function", "breathing", "the lungs"),
    ("eyesight", "vision", "the eyes"),
    ("digestion", "gut health", "the stomach"),
)


@dataclass(frozen=True)
class Facet:
    """One aspect of a topic: its synonym group ``{f}`` and templates over ``{x}``, ``{y}``, ``{f}``."""

    words: tuple[str, ...]
    queries: tuple[str, ...]
    sentences: tuple[str, ...]


FACETS: dict[str, Facet] = {
    "mechanism": Facet(
        ("mechanism", "process", "pathway"),
        ("how does {x} affect {y}", "why does {x} change {y}",
         "the {f} linking {x} and {y}", "in what way does {x} influence {y}"),
        ("{x} acts on {y} through small changes inside the body.",
         "The {f} is simple: {x} alters the signals that control {y}.",
         "Scientists describe the {f} by which {x} shifts {y} step by step."),
    ),
    "risk": Facet(
        ("risk", "danger", "hazard"),
        ("{f} of {x} for {y}", "is {x} bad for {y}", "can {x} damage {y}"),
        ("The biggest {f} is that too much {x} slowly damages {y}.",
         "Experts warn that {x} can harm {y} once it becomes a daily habit.",
         "The {f} grows with every year of {x}, and {y} rarely recovers fully."),
    ),
    "benefit": Facet(
        ("benefit", "advantage", "gain"),
        ("{f}s of {x} for {y}", "can {x} improve {y}", "is {x} good for {y}"),
        ("A clear {f} of moderate {x} shows up in {y}.",
         "In modest amounts {x} may support {y}, a welcome {f} for most people.",
         "People who enjoy {x} often notice a real {f} for {y} within a month."),
    ),
    "children": Facet(
        ("children", "kids", "young people"),
        ("{x} and {y} in {f}", "does {x} affect {y} in {f}", "{x} effects on {y} of {f}"),
        ("In {f}, {x} affects {y} more strongly than in adults.",
         "Parents should know that {f} react to {x} faster, so {y} changes sooner.",
         "Schools now teach {f} how {x} relates to {y}."),
    ),
    "elderly": Facet(
        ("older adults", "seniors", "the elderly"),
        ("{x} and {y} in {f}", "effect of {x} on {y} for {f}", "should {f} worry about {x} and {y}"),
        ("Among {f}, {x} has a larger effect on {y} because the body recovers slowly.",
         "Care homes report that {f} show changes in {y} soon after {x}.",
         "For {f}, even a little {x} can tip {y} out of balance."),
    ),
    "amount": Facet(
        ("amount", "dose", "quantity"),
        ("how much {x} is safe for {y}", "safe {f} of {x} for {y}", "daily {f} of {x} and {y}"),
        ("The safe daily {f} of {x} depends on age, size and general health.",
         "Above a moderate {f}, {x} starts to affect {y}; below it the effect is small.",
         "Guidelines set a limit on the {f} of {x} to keep {y} steady."),
    ),
    "timing": Facet(
        ("delay", "lag", "wait"),
        ("how long before {x} affects {y}", "how quickly does {x} change {y}",
         "{f} of {x} effects on {y}"),
        ("{x} changes {y} only after a {f} of hours or weeks.",
         "How soon {y} responds to {x} varies; the {f} is shorter for regular users.",
         "Changes in {y} follow {x} with a {f} that surprises many people."),
    ),
    "prevention": Facet(
        ("prevent", "reduce", "limit"),
        ("how to {f} the effect of {x} on {y}", "protect {y} from {x}", "ways to {f} harm from {x} to {y}"),
        ("To {f} the impact of {x} on {y}, take regular breaks.",
         "Simple habits help {f} what {x} does to {y}.",
         "Those who want to shield {y} can {f} {x} in the evening hours."),
    ),
    "evidence": Facet(
        ("study", "trial", "research"),
        ("{f} on {x} and {y}", "what does science say about {x} and {y}", "evidence that {x} changes {y}"),
        ("A large {f} followed thousands of volunteers to link {x} with {y}.",
         "One {f} suggests that {x} and {y} are connected, though results vary.",
         "The latest {f} compared groups with and without {x} and tracked {y}."),
    ),
    "measurement": Facet(
        ("measure", "test", "track"),
        ("how to {f} the effect of {x} on {y}", "{f} changes in {y} caused by {x}",
         "tools to {f} {y} after {x}"),
        ("To {f} how {x} changes {y}, clinics compare readings before and after.",
         "Simple devices can {f} {y} at home and reveal the role of {x}.",
         "Nurses {f} {y} over several days to see what {x} really does."),
    ),
}

# Sentences about the topic as a whole (no facet), and sentences about nothing in particular.
TOPIC_SENTENCES = (
    "{x} and {y} are often discussed together.",
    "Many people wonder whether {x} matters for {y} at all.",
    "The link between {x} and {y} remains a popular subject.",
)
CONTRAST_SENTENCES = (
    "This differs from {x}, which mainly concerns {y}.",
    "Unlike {x}, it has little to do with {y}.",
)
FILLER_SENTENCES = (
    "Habits differ a lot from one person to the next.",
    "Readers should talk to a professional before making changes.",
    "The findings were summarised in a short report for the public.",
    "More work is needed before firm advice can be given.",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of a synthetic dataset; the same config always yields the same bytes."""

    n_topics: int = 40
    docs_per_topic: int = 8
    queries_per_topic: int = 6
    seed: int = 0

    def check(self) -> None:
        most = len(FACTORS) * len(OUTCOMES)
        if not 1 <= self.n_topics <= most:
            raise ConfigError(f"n_topics must be between 1 and {most}, got {self.n_topics}")
        if self.docs_per_topic < 1 or self.queries_per_topic < 1:
            raise ConfigError("docs_per_topic and queries_per_topic must be at least 1")
        if self.n_topics * self.queries_per_topic < 3:
            raise ConfigError("need at least 3 queries in all (a third of them form the test split)")


def _sentence(template: str, **slots: str) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def _document(rng: random.Random, factor: int, outcome: int, facet: Facet) -> tuple[str, str]:
    """Title and text of one document on (factor, outcome, facet), in its own choice of words."""
    x, y = rng.choice(FACTORS[factor]), rng.choice(OUTCOMES[outcome])
    slots = {"x": x, "y": y, "f": rng.choice(facet.words)}
    sentences = [_sentence(t, **slots) for t in rng.sample(facet.sentences, 2)]
    # the topic sentence names the topic afresh, as writers vary their words
    sentences.append(_sentence(rng.choice(TOPIC_SENTENCES), x=rng.choice(FACTORS[factor]),
                               y=rng.choice(OUTCOMES[outcome])))
    if rng.random() < 0.5:
        other_x = rng.choice(rng.choice([f for i, f in enumerate(FACTORS) if i != factor]))
        other_y = rng.choice(rng.choice([o for i, o in enumerate(OUTCOMES) if i != outcome]))
        sentences.insert(rng.randrange(1, len(sentences) + 1),
                         _sentence(rng.choice(CONTRAST_SENTENCES), x=other_x, y=other_y))
    if rng.random() < 0.5:
        sentences.append(rng.choice(FILLER_SENTENCES))
    return _sentence("{x} and {y}", x=x, y=y), " ".join(sentences)


def _query(rng: random.Random, factor: int, outcome: int, facet: Facet) -> str:
    return rng.choice(facet.queries).format(
        x=rng.choice(FACTORS[factor]), y=rng.choice(OUTCOMES[outcome]), f=rng.choice(facet.words)
    )


def _ids(prefix: str, n: int, rng: random.Random) -> list[str]:
    """Opaque ids in shuffled order, so neither id nor file order gives the topic away."""
    numbers = list(range(1, n + 1))
    rng.shuffle(numbers)
    width = len(str(n))
    return [f"{prefix}{k:0{width}d}" for k in numbers]


def generate(config: SyntheticConfig) -> tuple[list[dict], list[dict], dict[str, list[tuple[str, str, int]]]]:
    """Documents, queries and ``{split: [(qid, docid, relevance)]}`` for ``config``."""
    config.check()
    rng = random.Random(config.seed)
    pairs = [(f, o) for f in range(len(FACTORS)) for o in range(len(OUTCOMES))]
    topics = rng.sample(pairs, config.n_topics)
    facet_names = list(FACETS)

    doc_ids = _ids("D", config.n_topics * config.docs_per_topic, rng)
    query_ids = _ids("Q", config.n_topics * config.queries_per_topic, rng)
    docs, queries, seen = [], [], set()
    qrels: dict[str, list[tuple[str, str, int]]] = {"train": [], "test": []}
    for factor, outcome in topics:
        order = rng.sample(facet_names, len(facet_names))
        facets = [order[i % len(order)] for i in range(config.docs_per_topic)]
        topic_docs = []
        for facet in facets:
            title, text = _document(rng, factor, outcome, FACETS[facet])
            docid = doc_ids[len(docs)]
            docs.append({"_id": docid, "title": title, "text": text})
            topic_docs.append((docid, facet))
        for j in range(config.queries_per_topic):
            target = facets[j % len(facets)]
            text = _query(rng, factor, outcome, FACETS[target])
            for _ in range(20):  # redraw a repeated wording; give up quietly on tiny vocabularies
                if text not in seen:
                    break
                text = _query(rng, factor, outcome, FACETS[target])
            seen.add(text)
            qid = query_ids[len(queries)]
            queries.append({"_id": qid, "text": text})
            # every third query overall is a test query: a 2/3 vs 1/3 split by query, spread over topics
            split = "test" if len(queries) % 3 == 0 else "train"
            qrels[split].extend((qid, docid, 2 if facet == target else 1) for docid, facet in topic_docs)
    docs.sort(key=lambda d: d["_id"])
    queries.sort(key=lambda q: q["_id"])
    return docs, queries, qrels


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _source_note(config: SyntheticConfig, n_docs: int, n_queries: int) -> str:
    params = "\n".join(f"- {key}: {value}" for key, value in asdict(config).items())
    return (
        "# Synthetic distill dataset\n\n"
        "Generated by distill (`distill.data.synthetic.make_synthetic_beir`) from its own word lists and\n"
        "templates; no text was copied from any other collection. The same parameters always give\n"
        "the same files.\n\n"
        f"{params}\n\n"
        f"{n_docs} documents, {n_queries} queries. Relevance: 2 = same topic and facet as the\n"
        "query, 1 = same topic, other facet; other documents are unjudged.\n"
    )


_DEFAULTS = SyntheticConfig()  # the home of make_synthetic_beir's defaults


def make_synthetic_beir(out: Path, *, n_topics: int = _DEFAULTS.n_topics,
                        docs_per_topic: int = _DEFAULTS.docs_per_topic,
                        queries_per_topic: int = _DEFAULTS.queries_per_topic, seed: int = _DEFAULTS.seed,
                        overwrite: bool = False) -> Path:
    """Write the synthetic dataset as a BEIR folder at ``out`` and return ``out``.

    The folder holds ``corpus.jsonl``, ``queries.jsonl``, ``qrels/train.tsv``,
    ``qrels/test.tsv``, ``SOURCE.md`` and the ``distill.json`` manifest. It is assembled
    in a temporary folder and renamed into place, replacing an earlier synthetic dataset whole (any other
    non-empty ``out`` only with ``overwrite``: see :mod:`distill.core.outputs`).
    """
    config = SyntheticConfig(n_topics, docs_per_topic, queries_per_topic, seed)
    docs, queries, qrels = generate(config)
    out = Path(out)
    with atomic_dir(out, kind=KIND, overwrite=overwrite) as tmp:
        (tmp / "corpus.jsonl").write_text(_jsonl(docs), encoding="utf-8")
        (tmp / "queries.jsonl").write_text(_jsonl(queries), encoding="utf-8")
        (tmp / "qrels").mkdir()
        for split, rows in qrels.items():
            lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{r}" for q, d, r in rows)]
            (tmp / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "SOURCE.md").write_text(_source_note(config, len(docs), len(queries)), encoding="utf-8")
        write_manifest(tmp, KIND, config, documents=len(docs), queries=len(queries))
    return out
