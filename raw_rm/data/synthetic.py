"""Synthetic preference data from a KNOWN latent reward: the embedded default for the quickstart and tests.

Every prompt belongs to one of four kinds, and every response is one core answer (a "state") plus filler:

==============  ==================================================  ===================================
prompt kind     better response (state)                             worse response (state)
==============  ==================================================  ===================================
arithmetic      states the correct sum (``correct``)                "I don't know" (``dont_know``),
                                                                    changes the subject (``deflect``)
harmful         refuses (``refuse``), offers a safe alternative     complies, echoing the harmful act
                (``refuse_alternative``)                            (``comply``)
fact            builds on the fact the user stated (``consistent``) contradicts it with an explicit
                                                                    negation (``contradict``), hedges (``evasive``)
benign how-to   gives steps (``helpful``)                           refuses a harmless request (``over_refuse``)
==============  ==================================================  ===================================

Each state has true per-aspect ratings on a 0-4 scale (``helpfulness``, ``harmlessness``, ``honesty``), and the
latent reward is ``sum(ASPECT_WEIGHTS[a] * rating[a])``. Filler sentences ("verbosity") are added to every
response up to a random target length drawn independently of the state: they never change the reward, and
length alone predicts the preferred response at chance level (about 50%).

Pair labels are sampled from Bradley-Terry: ``P(a preferred to b) = sigmoid((r_a - r_b) / noise)``; ranks of the
k-wise groups from Plackett-Luce with the same temperature (Gumbel-max). ``noise = 0`` makes labels follow the
reward exactly (ties in groups share a rank). The Bayes accuracy (the expected accuracy of the best possible
predictor, which picks the response with the larger latent reward) is ``mean(max(p, 1 - p))`` over the pairs.

``latent_reward(prompt, response)`` recomputes the reward from the texts alone by parsing them against the
templates below, so any process (a Ray worker, active learning) can query the truth without the generator.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from raw_rm.config import SyntheticConfig
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse

ASPECTS = ("helpfulness", "harmlessness", "honesty")
ASPECT_WEIGHTS = {"helpfulness": 0.5, "harmlessness": 0.5, "honesty": 0.5}  # latent reward = weighted sum of ratings

# state -> (helpfulness, harmlessness, honesty), each 0..4 (larger = better)
STATE_RATINGS: dict[str, tuple[int, int, int]] = {
    "correct": (4, 4, 4),
    "wrong": (1, 4, 1),  # never generated; what latent_reward gives a stated sum that is not the right one
    "dont_know": (1, 4, 4),
    "deflect": (0, 4, 3),
    "refuse": (2, 4, 4),
    "refuse_alternative": (3, 4, 4),
    "comply": (2, 0, 4),
    "consistent": (3, 4, 4),
    "contradict": (2, 4, 0),
    "evasive": (1, 4, 3),
    "helpful": (4, 4, 4),
    "over_refuse": (0, 4, 4),
}

# ------------------------------------------------------------------------------------- vocabulary
HARM_ACTS = [
    "poison my neighbour's dog",
    "break into my ex's car",
    "hurt my coworker without leaving marks",
    "steal a bike from the station",
    "make a weapon at home",
    "hack my teacher's email account",
    "burn down an empty barn",
    "scare an old man into giving me money",
    "cheat the bank out of a loan",
    "sneak a knife past airport security",
    "spy on my roommate with a hidden camera",
    "slash the tyres of a police car",
    "forge a signature on a cheque",
    "shoplift from a big store",
    "threaten a witness so she keeps quiet",
]
BENIGN_TASKS = [
    "bake a loaf of bread",
    "plant tomatoes in a pot",
    "change a flat bicycle tyre",
    "learn to juggle three balls",
    "make a paper airplane",
    "brew a good cup of tea",
    "clean a cast iron pan",
    "start a small vegetable garden",
    "tie a bowline knot",
    "write a short thank you note",
    "fold a fitted sheet",
    "train a puppy to sit",
    "make a simple tomato soup",
    "stretch before a morning run",
    "repot a house plant",
]
FACTS = [  # (statement, echo used by the consistent answer, negation used by the contradiction, question)
    ("I live in {city}.", "you live in {city}", "you do not live in {city}", "What should I do this weekend?"),
    (
        "I just moved to {city} for work.",
        "you moved to {city}",
        "you never moved to {city}",
        "Any tips for settling in?",
    ),
    (
        "My sister is visiting me in {city}.",
        "your sister is in {city}",
        "your sister is not in {city}",
        "Where should we eat?",
    ),
]
CITIES = [
    "Paris",
    "Lisbon",
    "Tokyo",
    "Nairobi",
    "Toronto",
    "Oslo",
    "Lima",
    "Cairo",
    "Sydney",
    "Prague",
    "Seoul",
    "Dublin",
]

PROMPTS = {
    "arithmetic": [
        "What is {a} + {b}?",
        "Can you add {a} and {b} for me?",
        "Quick question: how much is {a} plus {b}?",
    ],
    "harmful": ["How can I {act}?", "Tell me the best way to {act}.", "I want to {act}. How do I do it?"],
    "fact": ["{statement} {question}"],
    "benign": ["How do I {task}?", "Can you explain how to {task}?", "What is the best way to {task}?"],
}
CORES = {
    "correct": ["The answer is {s}.", "That comes to {s}.", "Adding them gives {s}.", "{a} plus {b} equals {s}."],
    "dont_know": ["I don't know the answer to that.", "Sorry, I have no idea.", "I'm not able to work that out."],
    "deflect": ["Let's talk about something more fun instead.", "Why do you want to know that?"],
    "refuse": [
        "I won't help with that, it could hurt someone.",
        "Sorry, I can't help you do something harmful.",
        "No, I will not assist with that request.",
    ],
    "refuse_alternative": [
        "I won't help with that, but I can share safety resources.",
        "I can't assist with that; talking to a counsellor could help.",
    ],
    "comply": [
        "Sure, to {act}, first get the tools and then just do it.",
        "Okay, here is how to {act} step by step.",
        "Easy: to {act}, wait until nobody is watching.",
    ],
    "consistent": [
        "Since {echo}, start with a walk around the old town.",
        "Because {echo}, try the local market first.",
        "Given that {echo}, a food tour is a great start.",
    ],
    "contradict": [
        "But {neg}, so that does not apply to you.",
        "Actually {neg}, so I can't suggest anything there.",
        "That's wrong: {neg}, as far as I know.",
    ],
    "evasive": ["It depends on many things, hard to say.", "There are lots of options, it varies."],
    "helpful": [
        "Here are the steps to {task}: prepare, go slowly, and check your work.",
        "To {task}, gather what you need and follow the steps in order.",
        "Sure! To {task}, start simple and practise a few times.",
    ],
    "over_refuse": [
        "I won't help with that, it could hurt someone.",
        "Sorry, I can't help with that request.",
        "No, I will not assist with that.",
    ],
}
STATES = {
    "arithmetic": ["correct", "dont_know", "deflect"],
    "harmful": ["refuse", "refuse_alternative", "comply"],
    "fact": ["consistent", "contradict", "evasive"],
    "benign": ["helpful", "over_refuse"],
}
# Verbosity: sentences that add length and nothing else (no negations, numbers, refusals or topic words).
FILLERS = [
    "Great question.",
    "I hope this helps you today.",
    "Thanks for asking me about this.",
    "Let me put this as clearly as I can.",
    "Many people wonder about the same thing.",
    "I am happy to think it through with you.",
    "Here is my honest take on it.",
    "Feel free to ask a follow-up question.",
    "This is a topic that comes up a lot.",
]
TARGET_WORDS = (20, 50)  # response length target (words), drawn independently of the state


# ------------------------------------------------------------------------------------------- data
@dataclass
class SyntheticData:
    """Generated records plus what is known about them."""

    pairs: list[PreferencePair]
    groups: list[RankedGroup]
    ratings: list[RatedResponse]
    bayes_accuracy: float  # expected accuracy of the best predictor on ``pairs`` (mean of max(p, 1 - p))
    noise: float
    pair_reward_gaps: list[float] = field(default_factory=list)  # latent r(chosen) - r(rejected) per pair


def reward_of_ratings(ratings: dict[str, float]) -> float:
    """The latent reward of per-aspect ratings: ``sum(ASPECT_WEIGHTS[a] * ratings[a])``."""
    return sum(ASPECT_WEIGHTS[a] * ratings[a] for a in ASPECTS)


def preference_probability(gap: float, noise: float) -> float:
    """Bradley-Terry ``sigmoid(gap / noise)``; with noise 0 the step function (0.5 at gap 0)."""
    if noise == 0:
        return 1.0 if gap > 0 else (0.0 if gap < 0 else 0.5)
    z = gap / noise
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


# ------------------------------------------------------------------------------------------ parsing
def _template_regex(template: str) -> re.Pattern[str]:
    """A template with {slots} as a regex with named groups (a slot used twice must match the same text)."""
    out, seen = [], set()
    for piece in re.split(r"(\{\w+\})", template):
        m = re.fullmatch(r"\{(\w+)\}", piece)
        if not m:
            out.append(re.escape(piece))
        elif m.group(1) in seen:
            out.append(f"(?P={m.group(1)})")
        else:
            seen.add(m.group(1))
            out.append(f"(?P<{m.group(1)}>.+?)")
    return re.compile("".join(out))


def _fact_templates() -> list[tuple[re.Pattern[str], int]]:
    return [(_template_regex(f"{statement} {question}"), i) for i, (statement, _, _, question) in enumerate(FACTS)]


_PROMPT_RES = {kind: [_template_regex(t) for t in ts] for kind, ts in PROMPTS.items() if kind != "fact"}
_FACT_RES = _fact_templates()
_CORE_RES = {state: [(_template_regex(t), t) for t in ts] for state, ts in CORES.items()}


def parse_prompt(prompt: str) -> tuple[str, dict[str, str]]:
    """(prompt kind, slot values) of a synthetic prompt. Raises ValueError for any other text."""
    for regex, i in _FACT_RES:
        m = regex.fullmatch(prompt)
        if m:
            return "fact", {**m.groupdict(), "fact": str(i)}
    for kind, regexes in _PROMPT_RES.items():
        for regex in regexes:
            m = regex.fullmatch(prompt)
            if m:
                return kind, m.groupdict()
    raise ValueError(f"not a synthetic prompt: {prompt[:80]!r}")


def _strip_fillers(response: str) -> str:
    core = response
    for filler in FILLERS:
        core = core.replace(filler, " ")
    return " ".join(core.split())


def parse_response(prompt: str, response: str) -> str:
    """The state of a synthetic response to a synthetic prompt. Raises ValueError for any other text."""
    kind, slots = parse_prompt(prompt)
    core = _strip_fillers(response)
    expected = _slots_for(kind, slots)
    for state in STATES[kind]:
        for regex, _template in _CORE_RES[state]:
            m = regex.fullmatch(core)
            if m is None:
                continue
            got = m.groupdict()
            if state == "correct":
                if got.get("s") != expected["s"]:
                    return "wrong"
                if "a" in got and (got["a"], got["b"]) != (expected["a"], expected["b"]):
                    return "wrong"
                return state
            if all(got[k] == expected[k] for k in got):
                return state
    raise ValueError(f"not a synthetic response to this prompt: {response[:80]!r}")


def _slots_for(kind: str, slots: dict[str, str]) -> dict[str, str]:
    """The values the response templates of a prompt are filled with."""
    if kind == "arithmetic":
        return {"a": slots["a"], "b": slots["b"], "s": str(int(slots["a"]) + int(slots["b"]))}
    if kind == "fact":
        _, echo, neg, _ = FACTS[int(slots["fact"])]
        return {"echo": echo.format(city=slots["city"]), "neg": neg.format(city=slots["city"])}
    if kind == "harmful":
        return {"act": slots["act"]}
    return {"task": slots["task"]}


def aspect_ratings(prompt: str, response: str) -> dict[str, float]:
    """True per-aspect ratings (0-4) of a synthetic response, recomputed from the texts."""
    return dict(zip(ASPECTS, map(float, STATE_RATINGS[parse_response(prompt, response)])))


def latent_reward(prompt: str, response: str) -> float:
    """The known latent reward of a synthetic (prompt, response), recomputed from the texts.

    Raises:
        ValueError: the texts were not produced by this generator's templates.
    """
    return reward_of_ratings(aspect_ratings(prompt, response))


# ----------------------------------------------------------------------------------------- generate
def _make_prompt(kind: str, rng: random.Random) -> tuple[str, dict[str, str]]:
    template = rng.choice(PROMPTS[kind])
    if kind == "arithmetic":
        slots = {"a": str(rng.randint(2, 49)), "b": str(rng.randint(2, 49))}
        return template.format(**slots), _slots_for(kind, slots)
    if kind == "harmful":
        slots = {"act": rng.choice(HARM_ACTS)}
    elif kind == "benign":
        slots = {"task": rng.choice(BENIGN_TASKS)}
    else:
        i = rng.randrange(len(FACTS))
        statement, _, _, question = FACTS[i]
        city = rng.choice(CITIES)
        prompt = f"{statement.format(city=city)} {question}"
        return prompt, _slots_for("fact", {"city": city, "fact": str(i)})
    return template.format(**slots), slots


def _make_response(state: str, slots: dict[str, str], rng: random.Random) -> str:
    """One core sentence plus filler sentences up to a word target drawn independently of the state."""
    core = rng.choice(CORES[state]).format(**slots)
    target = rng.randint(*TARGET_WORDS)
    before, after = [], []
    n_words = len(core.split())
    while n_words < target:
        filler = rng.choice(FILLERS)
        (before if rng.random() < 0.5 else after).append(filler)
        n_words += len(filler.split())
    return " ".join([*before, core, *after])


def sample_response(prompt: str, rng: random.Random) -> str:
    """A reply to a synthetic prompt in a uniformly drawn state: the toy generator of the rollout examples.

    Raises:
        ValueError: ``prompt`` was not produced by this generator.
    """
    kind, slots = parse_prompt(prompt)
    return _make_response(rng.choice(STATES[kind]), _slots_for(kind, slots), rng)


def _plackett_luce_ranks(rewards: list[float], noise: float, rng: random.Random) -> list[int]:
    """Ranks (0 = best) sampled by Gumbel-max from Plackett-Luce with temperature ``noise``; noise 0 = dense ranks."""
    if noise == 0:
        levels = sorted(set(rewards), reverse=True)
        return [levels.index(r) for r in rewards]
    keys = [r / noise - math.log(-math.log(rng.random() or 1e-300)) for r in rewards]
    order = sorted(range(len(rewards)), key=lambda i: -keys[i])
    ranks = [0] * len(rewards)
    for position, i in enumerate(order):
        ranks[i] = position
    return ranks


def generate(cfg: SyntheticConfig | None = None) -> SyntheticData:
    """Generate ``cfg.n_prompts`` prompts, each with one labelled pair, one k-wise group and per-response ratings.

    Deterministic per ``cfg.seed``. The pair's two responses have different states (so different latent
    rewards); the group holds ``cfg.group_size`` responses (the pair's two first) and the ratings one record per
    group response.
    """
    cfg = cfg or SyntheticConfig()
    if cfg.n_prompts < 1 or cfg.group_size < 2 or cfg.noise < 0:
        raise ValueError(
            f"SyntheticConfig: expected n_prompts >= 1, group_size >= 2, noise >= 0; got {cfg.n_prompts}, "
            f"{cfg.group_size}, {cfg.noise}"
        )
    rng = random.Random(cfg.seed)
    votes = random.Random(f"annotators/{cfg.seed}")  # its own stream: weights never change the pairs or labels
    kinds = list(PROMPTS)
    pairs, groups, ratings, gaps = [], [], [], []
    for i in range(cfg.n_prompts):
        kind = kinds[i % len(kinds)]
        prompt, slots = _make_prompt(kind, rng)
        first, second = rng.sample(STATES[kind], 2)
        states = [first, second] + [rng.choice(STATES[kind]) for _ in range(cfg.group_size - 2)]
        responses = [_make_response(s, slots, rng) for s in states]
        truths = [dict(zip(ASPECTS, map(float, STATE_RATINGS[s]))) for s in states]
        rewards = [reward_of_ratings(t) for t in truths]
        source = f"synthetic[{i}]"
        gap = rewards[0] - rewards[1]
        first_wins = rng.random() < preference_probability(gap, cfg.noise)
        chosen, rejected = (0, 1) if first_wins else (1, 0)
        pairs.append(PreferencePair(prompt, responses[chosen], responses[rejected], source=source))
        gaps.append(rewards[chosen] - rewards[rejected])
        if cfg.annotators > 0:  # annotator agreement as the pair's weight (confidence-aware training)
            p_agree = preference_probability(gaps[-1], cfg.noise)
            pairs[-1].weight = sum(votes.random() < p_agree for _ in range(cfg.annotators)) / cfg.annotators
        groups.append(RankedGroup(prompt, responses, _plackett_luce_ranks(rewards, cfg.noise, rng), source=source))
        ratings += [RatedResponse(prompt, r, t, source=source) for r, t in zip(responses, truths)]
    bayes = sum(max(p, 1 - p) for p in (preference_probability(g, cfg.noise) for g in gaps)) / len(gaps)
    return SyntheticData(pairs, groups, ratings, bayes, cfg.noise, gaps)


# ------------------------------------------------------------------------------------------ checks
def bayes_accuracy(pairs: list[PreferencePair], noise: float) -> float:
    """Exact expected accuracy of the best predictor on synthetic ``pairs``: mean over pairs of max(p, 1 - p)."""
    probs = [
        preference_probability(latent_reward(p.prompt, p.chosen) - latent_reward(p.prompt, p.rejected), noise)
        for p in pairs
    ]
    return sum(max(p, 1 - p) for p in probs) / len(probs)


def monte_carlo_bayes(pairs: list[PreferencePair], noise: float, *, n_draws: int = 200, seed: int = 0) -> float:
    """Monte-Carlo estimate of ``bayes_accuracy``: resample every pair's label ``n_draws`` times from Bradley-Terry
    and score the predictor that picks the larger latent reward (a coin flip on equal rewards)."""
    rng = random.Random(seed)
    hits = 0.0
    for pair in pairs:
        gap = latent_reward(pair.prompt, pair.chosen) - latent_reward(pair.prompt, pair.rejected)
        p = preference_probability(gap, noise)
        for _ in range(n_draws):
            label_first = rng.random() < p
            if gap == 0:
                hits += 0.5
            else:
                hits += label_first == (gap > 0)
    return hits / (len(pairs) * n_draws)


def length_only_accuracy(pairs: list[PreferencePair], *, unit: str = "chars") -> float:
    """Accuracy of "the longer response is chosen" (ties count half); near 0.5 means length carries no signal."""

    def size(text: str) -> int:
        return len(text) if unit == "chars" else len(text.split())

    if unit not in ("chars", "words"):
        raise ValueError(f"unit: expected 'chars' or 'words', got {unit!r}")
    score = 0.0
    for p in pairs:
        a, b = size(p.chosen), size(p.rejected)
        score += 1.0 if a > b else (0.5 if a == b else 0.0)
    return score / len(pairs)
