"""A labelled test corpus for the data filters: clean classics passages mixed with generated junk.

``build_mixed_corpus(seed)`` returns :class:`LabelledDocument` objects of seven kinds (``KINDS``):
``classics`` (clean, ``junk=False``): ``3 * per_kind`` passages cut at line boundaries from the bundled
corpus (offline, from the local cache), a third each from Shakespeare, Milton and the Bible, line endings
normalised to ``\\n`` (each is a substring of ``classics_texts()``); ``spam`` (offers, prices, URLs, phone
numbers, ALL CAPS, exclamation marks); ``keyword_stuffing``; ``boilerplate`` (menus, cookie banners, logins,
footers); ``garbled`` (mojibake, character soup, word salad, OCR noise, in turn); ``non_english``
(passages of ``samples/multilingual.jsonl`` with ``lang != "en"``, one a document, pairs of one language once
they run out); ``offensive`` (2 to 6 insults or profanities, sometimes with a neutral line).

Every kind but ``non_english`` is at least 100 characters long; ``non_english`` is naturally short (about
half of the sample's passages are under 100 characters; ``min_non_english_chars`` lengthens them). A seed
gives the same corpus every time (each kind has its own ``random.Random``); no two documents are the same.
``write_jsonl`` writes ``{"text", "kind", "junk"}`` records that ``lightning-llm prepare --source`` reads.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

KINDS = ("classics", "spam", "keyword_stuffing", "boilerplate", "garbled", "non_english", "offensive")
CLASSICS_WORKS = ("shakespeare", "milton", "bible")
MULTILINGUAL_SAMPLE = Path(__file__).parent / "samples" / "multilingual.jsonl"
MIN_CHARS = 100  # every kind but non_english is at least this long
_SKIP_FRONT = 0.03  # share of each work's lines (title pages, prefaces, cast lists) no passage starts in


@dataclass(frozen=True)
class LabelledDocument:
    """A document of the mixed corpus, its kind (one of ``KINDS``) and whether a filter should drop it."""

    text: str
    kind: str
    junk: bool


# -- the clean class: classics passages -------------------------------------------------------------------
@lru_cache(maxsize=1)
def classics_texts() -> dict[str, tuple[str, ...]]:
    """The classics documents by work, line endings normalised to ``\\n``, duplicates (Milton's) once."""
    from lightning_llm.data.classics import ClassicsSource  # what the registered "classics" source builds

    texts: dict[str, dict[str, None]] = {work: {} for work in CLASSICS_WORKS}
    for doc in ClassicsSource().documents():
        work = doc.source.removeprefix("classics:").partition("/")[0]
        texts[work][doc.text.replace("\r\n", "\n")] = None
    return {work: tuple(found) for work, found in texts.items()}


def _passage(rng: random.Random, lines: list[str], lo: int, hi: int) -> tuple[int, int, str] | None:
    """Whole lines ``lines[start:end]`` from a random start, ``lo``–``hi`` characters once stripped."""
    start = rng.randrange(int(len(lines) * _SKIP_FRONT), len(lines))
    while start < len(lines) and not lines[start].strip():
        start += 1
    target, size, end = rng.randint(lo, hi), -1, start
    while end < len(lines) and size < target and size + 1 + len(lines[end]) <= hi:
        size += 1 + len(lines[end])
        end += 1
    text = "\n".join(lines[start:end]).strip()
    return (start, end, text) if lo <= len(text) <= hi else None


def _classics(rng: random.Random, n: int, lo: int, hi: int, seen: set[str]) -> list[str]:
    """``n`` passages, taken from the three works in turn, each work's documents weighted by length."""
    works = classics_texts()
    split = {work: [text.split("\n") for text in texts] for work, texts in works.items()}
    used: dict[tuple[str, int], list[tuple[int, int]]] = {}
    out: list[str] = []
    for i in range(n):
        work = CLASSICS_WORKS[i % len(CLASSICS_WORKS)]
        for _ in range(1000):
            index = rng.choices(range(len(works[work])), weights=[len(t) for t in works[work]])[0]
            cut = _passage(rng, split[work][index], lo, hi)
            if cut is None or cut[2] in seen:
                continue
            spans = used.setdefault((work, index), [])
            if any(cut[0] < e and s < cut[1] for s, e in spans):
                continue  # overlaps a passage already taken
            spans.append(cut[:2])
            seen.add(cut[2])
            out.append(cut[2])
            break
        else:
            raise RuntimeError(f"No new {lo}-{hi} character passage in {work}: widen passage_chars.")
    return out


# -- junk generators ---------------------------------------------------------------------------------------
Maker = Callable[[random.Random, int], str]  # (rng, index of the document) -> its text


def _unique(rng: random.Random, n: int, make: Maker, seen: set[str]) -> list[str]:
    """``n`` texts from ``make(rng, i)`` that are new to ``seen`` (which they join)."""
    out: list[str] = []
    tries = 50 * n + 100
    while len(out) < n and tries:
        tries -= 1
        if (text := make(rng, len(out))) not in seen:
            seen.add(text)
            out.append(text)
    if len(out) < n:
        raise RuntimeError(f"Could only make {len(out)} distinct documents of {n}.")
    return out


def _bank(block: str) -> dict[str, list[str]]:
    """``[name] entry|entry`` sections; entries are separated by ``|`` or a line break."""
    parts = re.split(r"^\[([^\]]+)\]", block.strip(), flags=re.M)[1:]
    return {
        name: [e.strip() for e in re.split(r"[|\n]", body) if e.strip()]
        for name, body in zip(parts[::2], parts[1::2], strict=True)
    }


_BANK = _bank("""
[product] weight loss pills|designer watches|casino bonus|crypto signals|cheap meds|replica handbags|diet tea
VPN licence|forex robot|teeth whitening kit|anti-aging cream|payday loans|Instagram followers|keto gummies
solar panels|gaming laptops|male enhancement pills|luxury sunglasses
[headline] BUY {P} NOW|LIMITED TIME OFFER|FREE {P} TODAY|YOU HAVE BEEN SELECTED|CONGRATULATIONS WINNER
100% GUARANTEED RESULTS|MEGA SALE ON {P}|LAST CHANCE|DON'T MISS OUT|EXCLUSIVE DEAL ON {P}
[spam] Get {pct}% OFF {p} - only ${price} today!|Click here ➜ {url}|CLICK HERE to claim your reward: {url}
Call now: {phone} (toll free, 24/7)!!!|Hurry!! Only {k} left in stock at this price!!!
Order before midnight and get a second {p} FREE!|No prescription needed. No credit check. No questions asked.
Visit {url} and enter code {code} at checkout.|Lose {k} pounds in {d} days without diet or exercise!
Make ${big} a week from home!!! Click here to find out how: {url}|Act now! This offer expires in {h} hours!
Doctors HATE this one weird trick for {p}!|Was ${old}, NOW ONLY ${price}!!! FREE SHIPPING WORLDWIDE!
Dear friend, you have been chosen to receive {p} at NO COST. Reply today!|BEST PRICES ON {P} GUARANTEED!!!
Text {code} to {short} for your FREE sample!|Unsubscribe: {url}/unsubscribe?id={id}
Thousands of satisfied customers!!! Call {phone} NOW!|Risk free! 100% money back guarantee on all {p}!
Winners announced daily at {url} !!!
[domain_a] best|top|super|mega|cheap|vip|fast|great|easy|smart|lucky|prime
[domain_b] deals|offers|pharma|shop|store|bargains|prizes|outlet|saver|cash|market|promo
[tld] biz|info|xyz|top|ru|cn|club|online|net|com
[site_a] Blue|Green|Urban|Smart|Daily|Global|Tech|Home|Pixel|Nova|Bright|Metro
[site_b] Market|Hub|News|Works|Labs|Store|Media|Point|Zone|Press|Garden|Travel
[nav] Skip to main content|Home|About us|Products|Services|Blog|Contact|Careers|Press|FAQ|Shop|Sign in|Search
Menu|Support|Pricing|News|Events|My account|Cart (0)
[cookie] We use cookies to improve your experience on our site.|Accept all cookies|Reject non-essential
By continuing to browse, you agree to our use of cookies.|Manage preferences|Cookie settings|Learn more
This website uses cookies to ensure you get the best experience.|Got it!
We and our {n} partners store and access information on your device.
[login] Log in|Username or email|Password|Remember me|Forgot your password?|Don't have an account? Sign up
Sign in with Google|Create account|You must be logged in to post a comment.|Register for free
Your session has expired. Please log in again.
[misc] Share this:|Tweet|Print|Email|Related posts|Leave a reply|Posted in Uncategorized|Read more »
Your email address will not be published. Required fields are marked *|Previous post|Next post
Page 1 of {n}|Loading...|JavaScript is disabled in your browser.
[footer] © {year} {site} Inc. All rights reserved.|Privacy Policy|Terms of Use|Terms and Conditions|Sitemap
Do Not Sell My Personal Information|Accessibility|Powered by WordPress|Back to top
Follow us on Facebook, Twitter and Instagram|Subscribe to our newsletter|Enter your email address
{site} is a registered trademark of {site} Holdings LLC.|Copyright {year} {site}. All Rights Reserved.
All trademarks are the property of their respective owners.
[sentence] We’re sorry — the page you’re looking for can’t be found.
The café’s new menu features crème brûlée and a “deconstructed” tiramisù.
She said, “It’s not about the money — it’s about respect.”
Our naïve résumé parser doesn’t handle façade-style layouts… yet.
The museum’s exhibit on Bauhaus design runs until 30 September — don’t miss it!
“Quality over quantity,” the coach insisted, before the team’s season opener.
Prices start at €49 per night, breakfast included — book early to avoid disappointment.
The committee’s report, released on Monday, calls the policy “a costly mistake.”
He ordered a jalapeño burger, a piña colada and a slice of Black Forest gâteau.
It’s been a long week, but the software update is finally ready for testing.
Researchers say the new vaccine is safe — though more trials are needed.
The city council voted 7–2 to expand the bike lanes along the river.
Don’t forget: the library closes early on Sundays and public holidays.
Our team’s goal is simple — make great coffee and treat people well.
The author’s latest novel follows three sisters across a century of change.
After the storm, volunteers cleared fallen trees from the school’s playground.
The hotel’s rooftop bar offers views of the old town and the cathédrale.
“We didn’t expect this many visitors,” the organiser admitted with a smile.
Temperatures will reach 30 °C by Thursday, so drink plenty of water.
The recipe calls for two cups of flour, a pinch of salt and ½ cup of sugar.
Students who miss the deadline should contact their tutor as soon as possible.
The orchestra’s final concert of the season sold out within hours.
[offensive] You're a fucking idiot and everyone here knows it.|Shut the hell up, nobody asked you.
What a stupid piece of shit this is.|Go fuck yourself, you pathetic loser.
You absolute moron, learn to read before you post.|This is the dumbest crap I've ever seen.
Nobody gives a damn about your opinion, dumbass.|Get lost, you worthless bastard.
You're an asshole and you always have been.|Piss off and take your bullshit with you.
Are you really this brain-dead or just pretending?|What a load of bullshit, you lying sack of crap.
Screw you and screw this whole damn thread.|You ugly, useless waste of space.
Holy shit, you are as thick as a brick.|Eat shit, you clueless jackass.
Only a complete dipshit would believe that.|Fuck off back to whatever hole you crawled out of.
You're a spineless little weasel and a coward.|Stop whining, you miserable little prick.
God damn, you are one dense son of a bitch.|Kiss my ass, I'll say whatever I want.
Nobody likes you, you smug douchebag.|Take your crappy opinions and shove them up your ass.
You're so full of shit it's coming out of your ears.|What an absolute clown, go back to school, dimwit.
This fucking site is run by morons.|You suck at everything, you talentless hack.
Shut your goddamn mouth, you freaking imbecile.|Bloody hell, you're a daft pillock.
Cry me a river, you whiny little bitch.|You dumb twat, read the article first.
You're a disgusting creep and a total jerk.|Piece of crap product, and the seller is a lying scumbag.
Damn it, you screwed up again, you useless bonehead.|Your brain must be the size of a fucking pea.
[neutral] I read the whole thread last night.|The update came out on Tuesday.|Posted from my phone.
Thanks for the link, by the way.|Anyway, the match starts at eight.|Edit: fixed a typo.
Same as last year, really.|Replying to the comment above.
[handle] dave_84|xXgamerXx|troll_hunter|anon123|mike.j|sk8rboi|guest_4410|realTalk99
[kw:cheap flights] london|paris|new york|2026|deals|last minute|tickets|booking|online|discount
[kw:car insurance] cheap|quote|online|best|compare|young drivers|uk|2026|low cost|instant
[kw:weight loss] fast|pills|diet|tips|2026|best|quick|women|men|supplements
[kw:seo services] best|cheap|agency|local|expert|company|top|affordable|london|rank
[kw:online casino] best|free spins|bonus|no deposit|real money|slots|uk|2026|top|win
[kw:plumber near me] emergency|24/7|cheap|best|local|fast|licensed|boston|repair|leak
[kw:wedding dresses] cheap|lace|plus size|2026|online|sale|bridal|designer|boho|vintage
[kw:best vpn] free|fast|cheap|2026|streaming|netflix|android|windows|secure|download
[kw:payday loans] fast|online|same day|bad credit|no credit check|instant|cash|easy|uk|direct
[kw:used cars] cheap|for sale|near me|best|dealer|low mileage|2026|finance|bmw|toyota
""")
_OCR_CONFUSIONS = dict(p.split(">") for p in "e>c l>1 i>! o>0 a>@ m>rn h>b n>ri s>5 t>f c>e g>9 b>6".split())
_OCR_CONFUSIONS |= dict(p.split(">") for p in "u>v r>n d>cl w>vv y>v".split())
_SOUP = string.ascii_letters + string.digits + "!@#$%^&*()_+=~<>?/\\|{}[];:¤§¶•†‡°±×÷µ¿¡«»"


def _url(rng: random.Random) -> str:
    host = f"www.{rng.choice(_BANK['domain_a'])}-{rng.choice(_BANK['domain_b'])}{rng.randint(1, 999)}"
    path = rng.choice(["promo", "offer", "go", "win", "buy"])
    return f"{rng.choice(['http', 'https'])}://{host}.{rng.choice(_BANK['tld'])}/{path}"


def _spam(rng: random.Random, i: int) -> str:
    """Offer lines filled in with a product, prices, a URL, a phone number and a code; often a headline."""
    product, n = rng.choice(_BANK["product"]), rng.randint
    lines = rng.sample(_BANK["spam"], n(4, 9))
    if rng.random() < 0.7:
        lines.insert(0, rng.choice(_BANK["headline"]) + "!" * n(1, 5))
    price = n(9, 199) + rng.choice([0.99, 0.95, 0.49])
    values = dict(p=product, P=product.upper(), pct=n(5, 9) * 10, url=_url(rng), k=n(3, 40), d=n(5, 30))
    values |= dict(price=f"{price:.2f}", old=f"{price * n(3, 9):.2f}", id=n(10**6, 10**8), h=n(2, 48))
    values |= dict(phone=f"1-800-{n(200, 999)}-{n(1000, 9999)}", short=n(10000, 99999), big=f"{n(2, 15)},000")
    values["code"] = rng.choice(_BANK["domain_a"]).upper() + str(n(10, 99))
    return rng.choice(["\n", " ", "\n\n"]).join(line.format(**values) for line in lines)


def _keyword_stuffing(rng: random.Random, i: int) -> str:
    """A few keyword phrases of one topic, repeated: spaces, commas, pipes or lines between them."""
    topic = rng.choice(sorted(k for k in _BANK if k.startswith("kw:")))
    head, mods = topic.removeprefix("kw:"), rng.sample(_BANK[topic], rng.randint(3, 6))
    shapes = ["{h}", "{m} {h}", "{h} {m}", "best {h}", "cheap {h} {m}", "{h} {m} {m2}", "{m}", "{h} {h}"]
    target, parts = rng.randint(150, 700), []
    while sum(len(p) + 2 for p in parts) < target:
        m, m2 = rng.choice(mods), rng.choice(mods)
        parts.append(rng.choice(shapes).format(h=head, m=m, m2=m2))
    style = rng.randrange(4)
    if style == 1:
        parts = [p.title() for p in parts]
    return [" ", ", ", " | ", "\n"][style].join(parts)


def _boilerplate(rng: random.Random, i: int) -> str:
    """Lines of a few page furniture sections (menus, cookie banners, logins, footers) of one site."""
    site = rng.choice(_BANK["site_a"]) + rng.choice(_BANK["site_b"])
    values = {"site": site, "year": rng.randint(2009, 2026), "n": rng.randint(2, 900)}
    lines: list[str] = []
    while len("\n".join(lines)) < MIN_CHARS:
        sections = [s for s in ("nav", "cookie", "login", "misc", "footer") if rng.random() < 0.6] or [
            "footer"
        ]
        for section in sections:  # in page order: nav first, footer last
            picked = rng.sample(_BANK[section], rng.randint(3, 7))
            if section == "nav" and rng.random() < 0.5:
                picked = [" | ".join(picked)]
            lines += [line.format(**values) for line in picked]
    return "\n".join(lines)


def _mojibake(text: str) -> str:
    """``text`` encoded as UTF-8 and read back as Windows-1252 (the five bytes it leaves out as latin-1)."""
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in text.encode("utf-8"))


def _garbled(rng: random.Random, i: int) -> str:
    """Mojibake, character soup, word salad and OCR noise in turn."""
    text = " ".join(rng.sample(_BANK["sentence"], rng.randint(4, 9)))
    style = i % 4
    if style == 0:  # mojibake, sometimes twice over
        return _mojibake(_mojibake(text) if rng.random() < 0.4 else text)
    if style == 1:  # character soup
        size, tokens = rng.randint(150, 700), []
        while sum(len(t) + 1 for t in tokens) < size:
            tokens.append("".join(rng.choices(_SOUP, k=rng.randint(1, 12))))
        return " ".join(tokens)
    if style == 2:  # word salad: the words of real sentences, shuffled
        words = text.split()
        return " ".join(rng.sample(words, len(words)))
    rate = rng.uniform(0.15, 0.35)  # OCR noise: look-alike substitutions, stray characters, lost spaces
    out = []
    for ch in text:
        if rng.random() >= rate:
            out.append(ch)
        elif ch == " ":
            out.append(rng.choice(["", "  ", " . ", " ,"]))
        else:
            out.append(_OCR_CONFUSIONS.get(ch.lower()) or rng.choice("~^`'|;:,.-_*"))
    return "".join(out)


def _offensive(rng: random.Random, i: int) -> str:
    """2 to 6 insults, lengthened to 100 characters; sometimes a neutral line, sometimes @handles."""
    lines = rng.sample(_BANK["offensive"], rng.randint(2, 6))
    while len(" ".join(lines)) < MIN_CHARS and len(lines) < 6:
        lines.append(rng.choice([line for line in _BANK["offensive"] if line not in lines]))
    if rng.random() < 0.4:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(_BANK["neutral"]))
    if rng.random() < 0.3:
        lines = [f"@{rng.choice(_BANK['handle'])}: {line}" for line in lines]
    return "\n".join(lines)


# -- non-English passages -----------------------------------------------------------------------------------
def non_english_records(path: str | Path = MULTILINGUAL_SAMPLE) -> dict[str, list[str]]:
    """The sample's passages by language, ``lang == "en"`` left out."""
    if not Path(path).exists():
        raise FileNotFoundError(f"No multilingual sample at {path}: the non_english kind is read from it.")
    by_lang: dict[str, list[str]] = {}
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    for record in (json.loads(line) for line in lines if line.strip()):
        if record["lang"] != "en" and record["text"].strip():
            by_lang.setdefault(record["lang"], []).append(record["text"].strip())
    return by_lang


def _non_english(rng: random.Random, n: int, min_chars: int, seen: set[str]) -> list[str]:
    """One passage per document, languages in turn; pairs of one language once the singles run out."""
    by_lang = {lang: sorted(set(texts)) for lang, texts in sorted(non_english_records().items())}
    queues = {lang: rng.sample(texts, len(texts)) for lang, texts in by_lang.items()}
    langs = rng.sample(sorted(by_lang), len(by_lang))

    def make(rng: random.Random, i: int) -> str:
        waiting = [lang for lang in langs if queues[lang]]
        if waiting:
            lang = waiting[i % len(waiting)]
            parts = [queues[lang].pop()]
        else:
            lang = rng.choice(langs)
            parts = rng.sample(by_lang[lang], min(2, len(by_lang[lang])))
        while len(" ".join(parts)) < min_chars and len(parts) < len(by_lang[lang]):
            parts.append(rng.choice([t for t in by_lang[lang] if t not in parts]))
        return " ".join(parts)

    return _unique(rng, n, make, seen)


# -- the corpus ---------------------------------------------------------------------------------------------
_GENERATORS: dict[str, Maker] = dict(spam=_spam, keyword_stuffing=_keyword_stuffing, boilerplate=_boilerplate)
_GENERATORS |= dict(garbled=_garbled, offensive=_offensive)


def build_mixed_corpus(
    seed: int = 0,
    per_kind: int = 40,
    passage_chars: tuple[int, int] = (300, 1500),
    *,
    min_non_english_chars: int = 0,
) -> list[LabelledDocument]:
    """``3 * per_kind`` classics passages and ``per_kind`` documents of each junk kind, shuffled.

    ``passage_chars`` bounds the length of a classics passage; ``min_non_english_chars`` (0: off) joins
    passages of one language until a non-English document is that long. The same seed gives the same list.
    """
    lo, hi = passage_chars
    if per_kind < 0 or not 1 <= lo <= hi:
        raise ValueError(f"Need per_kind >= 0 and passage_chars 1 <= lo <= hi: {per_kind}, {passage_chars}")
    seen: set[str] = set()

    def rng_for(kind: str) -> random.Random:
        return random.Random(f"mixed-corpus:{seed}:{kind}")

    texts = {"classics": _classics(rng_for("classics"), 3 * per_kind, lo, hi, seen)}
    for kind in KINDS[1:]:
        if kind == "non_english":
            texts[kind] = _non_english(rng_for(kind), per_kind, min_non_english_chars, seen)
        else:
            texts[kind] = _unique(rng_for(kind), per_kind, _GENERATORS[kind], seen)
    docs = [LabelledDocument(text, kind, kind != "classics") for kind in KINDS for text in texts[kind]]
    rng_for("order").shuffle(docs)
    return docs


def write_jsonl(docs: Iterable[LabelledDocument], path: str | Path) -> Path:
    """Write ``{"text", "kind", "junk"}`` records, one a line (UTF-8), for ``prepare --source path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(asdict(doc), ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[LabelledDocument]:
    """The documents that :func:`write_jsonl` wrote to ``path``."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    return [LabelledDocument(**json.loads(line)) for line in lines if line.strip()]
