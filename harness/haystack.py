"""Token-exact haystacks: needle insertion at a depth, question and answer templates (pure functions)."""

# The needle and question formats are shared with the reference trainer (harness.reference), which
# mixes the same retrieval examples into training. Change them only together.
NEEDLE_TEMPLATE = "The special magic {city} number is: {number}."
QUESTION_TEMPLATE = "\n\nQuestion: What is the special magic {city} number?\nAnswer: The special magic {city} number is:"
ANSWER_TEMPLATE = " {number}."

CITIES = (
    "Tokyo", "Paris", "Cairo", "Lima", "Oslo", "Berlin", "Madrid", "Rome", "Vienna", "Prague",
    "Dublin", "Lisbon", "Athens", "Warsaw", "Budapest", "Helsinki", "Stockholm", "Copenhagen",
    "Amsterdam", "Brussels", "Zurich", "Geneva", "Moscow", "Kyiv", "Istanbul", "Tehran", "Delhi",
    "Mumbai", "Dhaka", "Bangkok", "Hanoi", "Manila", "Jakarta", "Singapore", "Seoul", "Beijing",
    "Shanghai", "Sydney", "Melbourne", "Auckland", "Toronto", "Montreal", "Vancouver", "Chicago",
    "Boston", "Denver", "Seattle", "Houston", "Miami", "Havana", "Bogota", "Quito", "Santiago",
    "Caracas", "Nairobi", "Lagos", "Accra", "Dakar", "Tunis", "Algiers",
)
DEFAULT_DIGITS = 7
