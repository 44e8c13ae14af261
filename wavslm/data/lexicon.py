"""A small English lexicon grouped by topic and a grammar that writes sentences from it.

About a thousand words in 17 topics, each with agents (animate subjects), things (objects), places
(with their preposition), transitive verbs, intransitive verbs and adjectives. Sentences stay inside one
topic, so a language model trained on the spoken corpus can learn topic structure. Every sentence is a
list of `Token`s that keep their role, phrase and grammatical number, so the benchmarks can break one
rule at a time (agreement, determiner-noun, word order).

Notation in the tables: `mouse>mice` an irregular plural (or past tense for verbs), `rice*` a mass noun
(never plural), `in:kitchen` a place with its preposition. Everything is deterministic given the
`random.Random` passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import cache

# fmt: off
TOPICS: dict[str, dict[str, str]] = {
    "animals": dict(
        agents="dog cat horse rabbit mouse>mice fox wolf>wolves bear lion tiger monkey squirrel hamster "
               "zebra giraffe camel kitten puppy",
        things="bone nest cage collar leash feather tail paw claw worm carrot blanket whisker hoof>hooves "
               "saddle bowl burrow kennel",
        places="at:zoo in:forest in:den in:cave in:field by:pond",
        verbs="chase catch>caught hunt bite>bit lick smell hide>hid carry follow sniff groom tame scratch",
        actions="bark run>ran sleep>slept jump hop>hopped growl purr",
        adjectives="wild furry hungry tiny fierce gentle brave sleepy loyal clever"),
    "food": dict(
        agents="cook baker chef waiter waitress guest diner",
        things="apple bread* cheese* soup* cake pie cookie sandwich potato>potatoes tomato>tomatoes onion "
               "banana grape peach melon garlic* honey* yogurt* muffin waffle biscuit cabbage spoon fork "
               "plate lemon rice* butter* sugar* salad pepper noodle pancake sausage",
        places="in:kitchen in:restaurant in:bakery in:cafe at:market at:table",
        verbs="bake cook cut>cut slice taste eat>ate serve mix peel boil fry order stir grill roast "
              "chop>chopped",
        actions="dine snack wait smile chew",
        adjectives="sweet sour salty fresh spicy delicious warm crispy juicy tasty"),
    "home": dict(
        agents="neighbor visitor landlord cleaner roommate plumber",
        things="chair sofa lamp window door carpet pillow shelf>shelves mirror clock curtain drawer vase "
               "key bathtub sink stove fridge ladder broom bucket hammer couch wardrobe towel candle basket "
               "cushion",
        places="in:house in:bedroom in:hallway in:attic in:basement in:garage on:porch",
        verbs="clean open close paint fix move sweep>swept dust fold lock decorate repair polish hang>hung",
        actions="rest relax nap>napped stay knock",
        adjectives="cozy clean dusty quiet bright dark messy soft comfortable empty"),
    "family": dict(
        agents="mother father sister brother grandmother grandfather aunt uncle cousin baby child>children "
               "parent daughter son husband wife>wives grandson niece nephew twin",
        things="photo gift letter album toy doll story picture card present puzzle diary cradle necklace "
               "ring blanket costume",
        places="at:barbecue at:party at:wedding at:picnic at:reunion",
        verbs="hug>hugged kiss call visit tell>told love hold>held share wrap invite cuddle comfort raise",
        actions="laugh cry giggle talk celebrate",
        adjectives="happy kind proud young little lovely funny polite caring sweet"),
    "school": dict(
        agents="teacher student pupil principal tutor classmate",
        things="book pencil notebook lesson exam desk ruler eraser chalk* homework* question answer poem "
               "sentence backpack calculator dictionary globe crayon essay diploma textbook chapter",
        places="in:classroom in:library at:school in:hall on:playground",
        verbs="read>read write>wrote study learn teach>taught ask draw>drew spell solve memorize copy "
              "explain repeat grade",
        actions="listen think>thought sit>sat whisper graduate",
        adjectives="smart curious difficult easy careful correct wrong simple strict patient"),
    "city": dict(
        agents="driver officer mayor tourist stranger shopkeeper mechanic pedestrian cyclist",
        things="car bus taxi bicycle ticket sign bridge building tower coin newspaper traffic* fountain "
               "statue bench lamppost billboard subway tram",
        places="in:street in:square at:station on:corner in:subway in:center",
        verbs="drive>drove park cross pass stop>stopped watch find>found sell>sold rent paint honk "
              "tow>towed deliver",
        actions="walk hurry shout commute",
        adjectives="busy crowded noisy tall modern narrow dirty famous expensive local"),
    "nature": dict(
        agents="hiker ranger gardener deer>deer owl beaver bee butterfly hedgehog",
        things="tree flower leaf>leaves branch rock stone mushroom grass* snow* umbrella acorn pinecone "
               "moss* pebble vine log fern thorn twig petal",
        places="on:hill in:valley in:meadow on:mountain by:lake in:woods",
        verbs="climb pick plant grow>grew collect gather protect admire",
        actions="hike wander camp bloom blossom",
        adjectives="green wet cold sunny cloudy windy rainy stormy frozen peaceful"),
    "sports": dict(
        agents="player coach runner referee goalkeeper champion fan athlete swimmer skater boxer wrestler",
        things="ball goal racket helmet medal trophy whistle net glove match race jersey bat puck skate "
               "sneaker stopwatch scoreboard dumbbell",
        places="in:stadium on:court in:gym on:track in:pool",
        verbs="kick throw>threw hit>hit win>won lose>lost block pass defend score dribble tackle",
        actions="cheer train compete sprint",
        adjectives="fast strong quick fit proud professional athletic final tough eager"),
    "music": dict(
        agents="singer drummer pianist musician guitarist conductor dancer composer violinist choir",
        things="song guitar piano drum violin trumpet flute melody record microphone rhythm chord cello "
               "harp banjo saxophone tambourine lyric headphone ballad opera",
        places="in:studio on:stage at:concert in:theater at:festival",
        verbs="play sing>sang hum>hummed tune compose practice hear>heard strum whistle",
        actions="dance perform clap>clapped bow rehearse",
        adjectives="loud beautiful musical catchy lively classical electric soft slow"),
    "travel": dict(
        agents="traveler pilot passenger guide tourist stewardess backpacker driver",
        things="suitcase passport map camera postcard luggage* souvenir backpack flight visa itinerary "
               "boarding ferry cruise brochure compass",
        places="at:airport in:hotel on:plane on:train at:border at:terminal",
        verbs="pack board miss reach explore book photograph cancel>canceled unpack schedule",
        actions="travel fly>flew arrive depart leave>left",
        adjectives="foreign distant exciting heavy early late exotic international scenic remote "
                   "adventurous"),
    "office": dict(
        agents="manager clerk secretary boss lawyer client employee accountant",
        things="report computer printer folder file contract paper* budget schedule stapler invoice memo "
               "spreadsheet calendar envelope badge briefcase cabinet",
        places="in:office at:meeting in:lobby at:bank in:elevator at:factory",
        verbs="sign print type copy send>sent finish review organize approve hire fire schedule email",
        actions="work argue complain retire",
        adjectives="important formal urgent annual boring successful serious official busy confidential "
                   "monthly"),
    "health": dict(
        agents="doctor nurse patient dentist surgeon pharmacist paramedic therapist",
        things="pill medicine* bandage fever tooth>teeth heart knee blood* vitamin thermometer mask syringe "
               "crutch wheelchair stethoscope ointment* tablet vaccine",
        places="at:hospital in:clinic at:pharmacy in:ambulance in:ward",
        verbs="treat examine heal cure measure prescribe inject bandage massage vaccinate",
        actions="cough sneeze recover breathe exercise",
        adjectives="sick healthy pale weak swollen sore medical painful tired dizzy feverish"),
    "clothes": dict(
        agents="shopper tailor customer cashier seller model",
        things="shirt dress coat hat scarf>scarves jacket sweater shoe boot sock belt skirt pocket button "
               "wallet glove sandal necklace bracelet earring tie pajamas* uniform",
        places="at:mall in:shop at:counter in:boutique",
        verbs="buy>bought wear>wore try sew iron choose>chose pay>paid return fold stitch knit>knitted",
        actions="shop browse spend>spent",
        adjectives="new cheap red blue black white woolen tight loose fancy colorful silk cotton striped "
                   "elegant"),
    "sea": dict(
        agents="sailor fisherman>fishermen diver surfer captain lifeguard dolphin whale shark crab seal "
               "octopus>octopuses pirate",
        things="boat shell wave sail anchor rope sand* fish>fish bucket lighthouse island oar net seaweed* "
               "coral* pearl harpoon canoe",
        places="on:beach at:harbor in:ocean by:shore at:sea",
        verbs="row pull tie drag>dragged spot>spotted steer",
        actions="swim>swam dive float surf sink>sank drift",
        adjectives="salty deep sandy calm rough shallow blue tropical stormy foamy"),
    "farm": dict(
        agents="farmer cow pig goat sheep>sheep chicken duck rooster horse turkey donkey lamb",
        things="corn* wheat* hay* tractor fence egg milk* pumpkin cart shovel seed barrel hoe plow saddle "
               "straw* bale trough sack",
        places="in:barn on:farm in:orchard in:stable in:pasture",
        verbs="harvest feed>fed milk dig>dug water plow load shear herd",
        actions="graze wake>woke work",
        adjectives="muddy rural ripe golden dry wooden fat noisy"),
    "technology": dict(
        agents="programmer engineer designer hacker robot user",
        things="laptop phone screen keyboard cable battery program password website chip server tablet "
               "router speaker charger monitor drone microchip printer",
        places="in:lab in:office at:desk on:network",
        verbs="charge install repair download upload test click delete update program>programmed encrypt "
              "scan>scanned",
        actions="code crash fail reboot",
        adjectives="digital wireless broken smart portable powerful fast modern electronic automatic "
                   "virtual"),
    "space": dict(
        agents="astronaut scientist professor inventor alien astronomer physicist chemist",
        things="rocket planet star moon telescope satellite comet crystal magnet microscope atom spaceship "
               "asteroid galaxy>galaxies meteor lens helmet spacesuit",
        places="in:space on:moon at:observatory in:orbit",
        verbs="launch observe discover invent examine study analyze measure calculate",
        actions="orbit explode glow shine>shone",
        adjectives="bright huge strange scientific hot ancient distant dark cosmic lunar solar weightless"),
}

# Words every topic shares: they carry grammar, not topic.
DETERMINERS = {"sg": ("the", "a", "this", "that", "every"), "pl": ("the", "these", "those", "some", "many", "two")}
MASS_DETERMINERS = ("the", "some", "this", "that")
PRONOUNS = {"sg": ("he", "she"), "pl": ("they", "we")}
ADVERBS = ("every morning", "at night", "today", "again", "slowly", "quickly", "often", "always", "sometimes",
           "on sunday", "after lunch", "in the evening")
COPULA = {"sg": "is", "pl": "are"}
FUNCTION_WORDS = frozenset("the a an this that every these those some many two he she they we is are was were "
                           "and then but every morning at night today again slowly quickly often always "
                           "sometimes on sunday after lunch in the evening by".split())
# fmt: on


def _plural(word: str) -> str:
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _third_person(verb: str) -> str:
    if verb == "have":
        return "has"
    return _plural(verb) if not verb.endswith("o") else verb + "es"


def _past(verb: str) -> str:
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    one_syllable = sum(a not in "aeiou" and b in "aeiou" for a, b in zip(" " + verb, verb, strict=False)) == 1
    if one_syllable and len(verb) >= 3 and verb[-1] not in "aeiouwxy" and verb[-2] in "aeiou" \
            and verb[-3] not in "aeiou":
        return verb + verb[-1] + "ed"  # stop -> stopped, but cook -> cooked, visit -> visited
    return verb + "ed"


@dataclass(frozen=True)
class Entry:
    """One lexicon word: `lemma`, part of speech, and its inflected forms."""

    lemma: str
    pos: str  # agent | thing | place | verb | action | adjective
    topic: str
    other: str = ""  # irregular plural / past tense, or the preposition of a place
    mass: bool = False

    def form(self, number: str = "sg", tense: str = "present") -> str:
        """Noun in `number`; verb in `tense` agreeing with a subject of `number`."""
        if self.pos in ("agent", "thing"):
            return self.lemma if number == "sg" or self.mass else (self.other or _plural(self.lemma))
        if self.pos in ("verb", "action"):
            if tense == "past":
                return self.other or _past(self.lemma)
            return _third_person(self.lemma) if number == "sg" else self.lemma
        return self.lemma


def _parse(topic: str, pos: str, text: str) -> list[Entry]:
    entries = []
    for item in text.split():
        mass = item.endswith("*")
        item = item.rstrip("*")
        if pos == "place":
            prep, lemma = item.split(":")
            entries.append(Entry(lemma, pos, topic, prep))
        else:
            lemma, _, other = item.partition(">")
            entries.append(Entry(lemma, pos, topic, other, mass))
    return entries


@cache
def lexicon() -> dict[str, dict[str, list[Entry]]]:
    """`{topic: {pos: [Entry, ...]}}` with pos in agent, thing, place, verb, action, adjective."""
    plural_keys = {"agents": "agent", "things": "thing", "places": "place", "verbs": "verb",
                   "actions": "action", "adjectives": "adjective"}
    return {topic: {plural_keys[k]: _parse(topic, plural_keys[k], v) for k, v in table.items()}
            for topic, table in TOPICS.items()}


@cache
def vocabulary() -> frozenset[str]:
    """Every word a sentence can contain: lemmas, their inflected forms and the function words."""
    words = set(FUNCTION_WORDS) | {"an"}
    for table in lexicon().values():
        for entries in table.values():
            for e in entries:
                words.add(e.lemma)
                words.update(e.form(n, t) for n in ("sg", "pl") for t in ("present", "past"))
    return frozenset(w for phrase in words for w in phrase.split())


@dataclass(frozen=True)
class Token:
    """A word in a sentence with what the benchmark perturbations need to know about it."""

    word: str
    role: str  # det | adj | noun | pron | verb | cop | prep | adv
    phrase: str = ""  # subj | obj | pp | vp | ""
    number: str = ""  # sg | pl, for determiners, nouns, pronouns and present-tense verbs
    entry: Entry | None = None


def _article(det: str, next_word: str) -> str:
    return ("an" if next_word[0] in "aeiou" else "a") if det == "a" else det


def noun_phrase(entry: Entry, number: str, phrase: str, rng: random.Random,
                adjective: Entry | None) -> list[Token]:
    """Determiner (+ adjective) + noun; mass nouns take only mass determiners and stay singular."""
    number = "sg" if entry.mass else number
    det = rng.choice(MASS_DETERMINERS if entry.mass else DETERMINERS[number])
    words = ([Token(adjective.lemma, "adj", phrase, "", adjective)] if adjective else []) + [
        Token(entry.form(number), "noun", phrase, number, entry)]
    return [Token(_article(det, words[0].word), "det", phrase, number)] + words


def sentence(topic: str, rng: random.Random, tense: str | None = None) -> list[Token]:
    """One sentence of `topic`: subject + (transitive verb + object | intransitive verb | copula + adjective),
    optionally a place and a time adverb. `tense` None draws present (3 in 4) or past."""
    table = lexicon()[topic]
    tense = tense or ("present" if rng.random() < 0.75 else "past")
    number = rng.choice(("sg", "pl"))
    kind = rng.choices(("transitive", "intransitive", "copula"), weights=(5, 3, 2))[0]

    def maybe_adj(p: float) -> Entry | None:
        return rng.choice(table["adjective"]) if rng.random() < p else None

    if kind == "copula":
        subj = noun_phrase(rng.choice(table["thing"] + table["agent"]), number, "subj", rng, None)
        number = subj[-1].number
        verb = Token(COPULA[number] if tense == "present" else {"sg": "was", "pl": "were"}[number], "cop", "vp",
                     number if tense == "present" else "")
        tokens = subj + [verb, Token(rng.choice(table["adjective"]).lemma, "adj", "vp")]
    else:
        if rng.random() < 0.15:
            subj = [Token(rng.choice(PRONOUNS[number]), "pron", "subj", number)]
        else:
            subj = noun_phrase(rng.choice(table["agent"]), number, "subj", rng, maybe_adj(0.4))
            number = subj[-1].number
        entry = rng.choice(table["verb" if kind == "transitive" else "action"])
        agrees = number if tense == "present" else ""  # past-tense verbs show no number
        tokens = subj + [Token(entry.form(number, tense), "verb", "vp", agrees, entry)]
        if kind == "transitive":
            tokens += noun_phrase(rng.choice(table["thing"]), rng.choice(("sg", "pl")), "obj", rng, maybe_adj(0.4))
    if rng.random() < (0.8 if kind == "intransitive" else 0.4):
        place = rng.choice(table["place"])
        tokens += [Token(place.other, "prep", "pp"), Token("the", "det", "pp", "sg"),
                   Token(place.lemma, "noun", "pp", "sg", place)]
    if rng.random() < 0.25:
        tokens += [Token(w, "adv") for w in rng.choice(ADVERBS).split()]
    return tokens


def text(tokens: list[Token]) -> str:
    """The sentence as text with a capital and a full stop (espeak reads the prosody from them)."""
    words = " ".join(t.word for t in tokens)
    return words[:1].upper() + words[1:] + "."


def content_words() -> list[str]:
    """Sorted lemmas of every topic word (no function words), the list the non-words come from."""
    return sorted({e.lemma for t in lexicon().values() for es in t.values() for e in es})


def with_word(tokens: list[Token], index: int, word: str) -> list[Token]:
    """`tokens` with the word at `index` replaced (the rest of the token kept)."""
    return tokens[:index] + [replace(tokens[index], word=word)] + tokens[index + 1:]
