"""The demo corpus's facts: each topic the demo model knows, with the words that name it and the sentences its
answers are made of (corpus.py turns them into styled answers and prompts)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str  # the topic's id: "moon", "bees"
    subject: str  # how a sentence names it: "the moon", "bees"
    keywords: tuple[str, ...]  # whole words that make a prompt about this topic
    facts: tuple[str, str, str]  # three short sentences every answer draws on
    summary: str  # one sentence, the heart of the TL;DR answer


TOPIC_FACTS: tuple[Topic, ...] = (
    Topic(
        "volcanoes",
        "volcanoes",
        ("volcano", "volcanoes", "volcanos"),
        (
            "A volcano is an opening in the crust where molten rock escapes.",
            "Molten rock is called lava once it reaches the surface.",
            "Famous volcanoes include Etna and Mount Fuji.",
        ),
        "Volcanoes are mountains that erupt molten rock.",
    ),
    Topic(
        "bees",
        "bees",
        ("bee", "bees"),
        (
            "Bees are flying insects that live in large colonies.",
            "They collect nectar and pollen from flowers.",
            "Honey bees turn nectar into honey.",
        ),
        "Bees pollinate flowers and make honey.",
    ),
    Topic(
        "tea",
        "tea",
        ("tea", "teas"),
        (
            "Tea is a drink made by steeping leaves in hot water.",
            "The leaves come from the Camellia sinensis plant.",
            "Green and black tea differ in how the leaves are processed.",
        ),
        "Tea is a hot drink brewed from leaves.",
    ),
    Topic(
        "chess",
        "chess",
        ("chess",),
        (
            "Chess is a strategy game for two players on a board of 64 squares.",
            "Each side starts with sixteen pieces.",
            "The goal is to checkmate the opposing king.",
        ),
        "Chess is a board game of strategy.",
    ),
    Topic(
        "rainbows",
        "rainbows",
        ("rainbow", "rainbows"),
        (
            "A rainbow forms when sunlight passes through raindrops.",
            "The drops bend the light and split it into colours.",
            "Red is on the outside of the arc and violet on the inside.",
        ),
        "Rainbows are sunlight split by raindrops.",
    ),
    Topic(
        "moon",
        "the moon",
        ("moon", "moons"),
        (
            "The Moon is the natural satellite of the Earth.",
            "It orbits our planet about once a month.",
            "Its gravity causes the ocean tides.",
        ),
        "The Moon lights up our night sky.",
    ),
    Topic(
        "bread",
        "bread",
        ("bread", "breads"),
        (
            "Bread is baked from flour, water and yeast.",
            "The yeast makes gas that lets the dough rise.",
            "People have baked bread for thousands of years.",
        ),
        "Bread is risen dough baked in an oven.",
    ),
    Topic(
        "octopuses",
        "octopuses",
        ("octopus", "octopuses", "octopi"),
        (
            "An octopus is a sea animal with eight arms.",
            "It has three hearts and blue blood.",
            "Octopuses are clever and change colour to hide.",
        ),
        "Octopuses are clever eight-armed sea animals.",
    ),
    Topic(
        "bicycles",
        "bicycles",
        ("bicycle", "bicycles", "bike", "bikes", "cycling"),
        (
            "A bicycle is a vehicle with two wheels moved by pedals.",
            "A chain carries power from the pedals to the back wheel.",
            "Cycling is cheap, quiet and good exercise.",
        ),
        "Bicycles are two-wheeled machines you pedal.",
    ),
    Topic(
        "glaciers",
        "glaciers",
        ("glacier", "glaciers"),
        (
            "A glacier is a huge mass of ice that moves slowly.",
            "It forms where more snow falls than melts.",
            "Glaciers carve valleys and hold much of the fresh water on Earth.",
        ),
        "Glaciers are slow rivers of ice.",
    ),
    Topic(
        "coffee",
        "coffee",
        ("coffee", "coffees"),
        (
            "Coffee is a drink brewed from roasted coffee beans.",
            "The beans are the seeds of a tropical shrub.",
            "It contains caffeine, which helps people stay awake.",
        ),
        "Coffee is a drink made from roasted beans.",
    ),
    Topic(
        "pianos",
        "pianos",
        ("piano", "pianos"),
        (
            "A piano is a musical instrument played with a keyboard.",
            "Each key moves a hammer that strikes a string.",
            "A standard piano has 88 keys.",
        ),
        "A piano is a keyboard instrument with hammers and strings.",
    ),
    Topic(
        "deserts",
        "deserts",
        ("desert", "deserts"),
        (
            "A desert is a place that gets very little rain.",
            "Many deserts are hot by day and cold at night.",
            "The Sahara is the largest hot desert.",
        ),
        "Deserts are very dry lands.",
    ),
    Topic(
        "lighthouses",
        "lighthouses",
        ("lighthouse", "lighthouses"),
        (
            "A lighthouse is a tower with a bright light near the sea.",
            "It warns ships about rocks and shows the way to port.",
            "Many lighthouses now run automatically.",
        ),
        "Lighthouses are towers that guide ships.",
    ),
    Topic(
        "penguins",
        "penguins",
        ("penguin", "penguins"),
        (
            "Penguins are birds that swim but cannot fly.",
            "Most of them live in the Southern Hemisphere.",
            "They use their wings as flippers in the water.",
        ),
        "Penguins are flightless birds that swim.",
    ),
    Topic(
        "recycling",
        "recycling",
        ("recycling", "recycle", "recycled"),
        (
            "Recycling turns used materials into new products.",
            "Paper, glass, metal and some plastics can be recycled.",
            "It saves energy and reduces waste.",
        ),
        "Recycling gives old materials a new life.",
    ),
    Topic(
        "kites",
        "kites",
        ("kite", "kites"),
        (
            "A kite is a light frame covered with cloth or paper.",
            "The wind pushes against it while a string holds it.",
            "Kites were first flown in China long ago.",
        ),
        "Kites are light frames flown on the wind.",
    ),
    Topic(
        "photosynthesis",
        "photosynthesis",
        ("photosynthesis",),
        (
            "Photosynthesis is how plants make food from light.",
            "Leaves take in carbon dioxide and water.",
            "They give off oxygen as a by-product.",
        ),
        "Photosynthesis turns light into plant food.",
    ),
    Topic(
        "origami",
        "origami",
        ("origami",),
        (
            "Origami is the art of folding paper into shapes.",
            "It usually needs no cuts or glue.",
            "A well-known model is the paper crane.",
        ),
        "Origami is the art of paper folding.",
    ),
    Topic(
        "thunderstorms",
        "thunderstorms",
        ("thunderstorm", "thunderstorms", "thunder", "lightning"),
        (
            "A thunderstorm is a storm with lightning and thunder.",
            "Lightning is a giant spark of electricity.",
            "Thunder is the sound of air heated by the spark.",
        ),
        "Thunderstorms are storms that bring lightning.",
    ),
)
