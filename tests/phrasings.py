"""What people say to a todo assistant, and what it should do: test data for the offline agent
(contract §8, issue 20). Written from how people talk, not from the agent's patterns.

Every phrasing runs for a new user who already has the tasks of SEEDED (their numbers are the
positions, from 1). Each expectation is a tool call: its name and the arguments that matter;
dates are functions of the user's today (the `X-Timezone` the test sends). `says` is text the
answer must contain, case-insensitive. No call with no `says` means: nothing may change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

Day = Callable[[date], date]


def days(n: int) -> Day:
    return lambda today: today + timedelta(days=n)


def weekday(name: str) -> Day:
    """The first such weekday after today ("by Friday", "on Monday")."""
    target = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].index(name)
    return lambda today: today + timedelta(days=(target - today.weekday() - 1) % 7 + 1)


def next_week(name: str) -> Day:
    """ "next Monday": that day in the week after this one (weeks run Monday to Sunday)."""
    target = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].index(name)
    return lambda today: today - timedelta(days=today.weekday()) + timedelta(days=7 + target)


def on(day: int, month: int) -> Day:
    """The next time it is that day: this year, or next year once it has passed."""

    def resolve(today: date) -> date:
        this_year = date(today.year, month, day)
        return this_year if this_year >= today else date(today.year + 1, month, day)

    return resolve


END_OF_WEEK: Day = lambda today: today + timedelta(days=6 - today.weekday())  # noqa: E731
YESTERDAY = days(-1)

# (title, due in days from today or None, priority, completed)
SEEDED = [
    ("Buy groceries", None, "normal", False),  # 1
    ("Dentist appointment", 3, "normal", False),  # 2
    ("Walk the dog", None, "normal", False),  # 3
    ("Pay the electricity bill", -2, "high", False),  # 4
    ("Call mum", None, "normal", True),  # 5
    ("Finish the quarterly report", 1, "normal", False),  # 6
    ("Book flights to Lisbon", 10, "low", False),  # 7
]


@dataclass
class Phrasing:
    message: str
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    says: str | None = None


def P(message: str, *calls: tuple[str, dict[str, Any]], says: str | None = None) -> Phrasing:
    return Phrasing(message, list(calls), says)


def add(title: str, **more: Any) -> tuple[str, dict[str, Any]]:
    return ("add_task", {"title": title, **more})


def done(task_id: int) -> tuple[str, dict[str, Any]]:
    return ("complete_task", {"task_id": task_id})


def delete(task_id: int) -> tuple[str, dict[str, Any]]:
    return ("delete_task", {"task_id": task_id})


def change(task_id: int, **changes: Any) -> tuple[str, dict[str, Any]]:
    return ("update_task", {"task_id": task_id, **changes})


def listing(**arguments: Any) -> tuple[str, dict[str, Any]]:
    return ("list_tasks", arguments)


def search() -> tuple[str, dict[str, Any]]:
    return ("search_knowledge", {})


KIND_DATE = "which day"

TASK_PHRASINGS: list[Phrasing] = [
    # Adding, plainly ----------------------------------------------------------------------
    P("add a task to water the plants", add("water the plants")),
    P("Add buy stamps", add("buy stamps")),
    P("new task: renew passport", add("renew passport")),
    P("Create a todo called clean the garage", add("clean the garage")),
    P("remind me to text Sarah", add("text Sarah")),
    P("Remind me to pick up the dry cleaning", add("pick up the dry cleaning")),
    P("please add vacuum the living room", add("vacuum the living room")),
    P("can you add a task to order a new kettle?", add("order a new kettle")),
    P("put fix the bike on my list", add("fix the bike")),
    P("add 'return library books'", add("return library books")),
    P('Add "Reply to Jo\'s email"', add("Reply to Jo's email")),
    P("note to self: back up the laptop", add("back up the laptop")),
    P("jot down cancel the newspaper subscription", add("cancel the newspaper subscription")),
    P("Add a reminder to take the bins out", add("take the bins out")),
    P("could you remind me to feed the cat", add("feed the cat")),
    # Adding with a date ----------------------------------------------------------------------
    P("remind me to call the bank tomorrow", add("call the bank", due_date=days(1))),
    P("add pay rent by Friday", add("pay rent", due_date=weekday("fri"))),
    P("Add a task to submit the expenses by friday", add("submit the expenses",
                                                          due_date=weekday("fri"))),
    P("add book a haircut for next Monday", add("book a haircut", due_date=next_week("mon"))),
    P("Remind me to send the invoice on 3 March", add("send the invoice", due_date=on(3, 3))),
    P("add renew the car insurance on the 15th of June", add("renew the car insurance",
                                                             due_date=on(15, 6))),
    P("add buy a birthday card for Anna, due December 24",
      add("buy a birthday card for Anna", due_date=on(24, 12))),
    P("remind me today to move the car", add("move the car", due_date=days(0))),
    P("add clean the fridge tonight", add("clean the fridge", due_date=days(0))),
    P("Add return the parcel in 3 days", add("return the parcel", due_date=days(3))),
    P("remind me in two weeks to check the smoke alarm", add("check the smoke alarm",
                                                             due_date=days(14))),
    P("add call the plumber the day after tomorrow", add("call the plumber", due_date=days(2))),
    P("add prepare slides for Wednesday", add("prepare slides", due_date=weekday("wed"))),
    P("add pick up the kids on Sunday", add("pick up the kids", due_date=weekday("sun"))),
    P("remind me to pay the gas bill by next Friday", add("pay the gas bill",
                                                         due_date=next_week("fri"))),
    P("Add a task to renew my gym pass by tmrw", add("renew my gym pass", due_date=days(1))),
    P("add file taxes by 2027-04-15", add("file taxes", due_date=lambda today: date(2027, 4, 15))),
    P("Add send the report in a week", add("send the report", due_date=days(7))),
    P("remind me to water the tomatoes this Saturday", add("water the tomatoes",
                                                           due_date=weekday("sat"))),
    P("add call grandma on March 1st", add("call grandma", due_date=on(1, 3))),
    # Priorities -----------------------------------------------------------------------------
    P("add an urgent task to call the landlord", add("call the landlord", priority="high")),
    P("add fix the leaking tap, it's urgent", add("fix the leaking tap", priority="high")),
    P("Add renew my passport as high priority", add("renew my passport", priority="high")),
    P("add clean the windows, low priority", add("clean the windows", priority="low")),
    P("remind me to sort the photos someday", add("sort the photos", priority="low")),
    P("add send the contract ASAP", add("send the contract", priority="high")),
    P("add email the accountant - important", add("email the accountant", priority="high")),
    P("add a high priority task to pay the fine by Monday",
      add("pay the fine", priority="high", due_date=weekday("mon"))),
    P("add tidy the shed, no rush", add("tidy the shed", priority="low")),
    P("Remind me urgently to call the vet", add("call the vet", priority="high")),
    # Several tasks in one message --------------------------------------------------------------
    P("add milk, eggs and bread", add("milk"), add("eggs"), add("bread")),
    P("add three tasks: wash the car, mow the lawn and paint the fence",
      add("wash the car"), add("mow the lawn"), add("paint the fence")),
    P("Add apples, bananas, pears", add("apples"), add("bananas"), add("pears")),
    P("add two tasks: call Tom and email Lisa", add("call Tom"), add("email Lisa")),
    P("put butter and cheese on my shopping list", add("butter"), add("cheese")),
    P("add buy milk, eggs and flour", add("buy milk"), add("buy eggs"), add("buy flour")),
    P("add the following tasks: hoover, dust; mop", add("hoover"), add("dust"), add("mop")),
    P("add these things to my list: plan the party, book the venue and send invites",
      add("plan the party"), add("book the venue"), add("send invites")),
    P("add call mom's dentist and dad's doctor", add("call mom's dentist and dad's doctor")),
    P("add wash up and dry the dishes", add("wash up and dry the dishes")),
    # Implied adds --------------------------------------------------------------------------------
    P("I need to call mum", add("call mum")),
    P("don't let me forget the bins", add("the bins")),
    P("I have to renew my driving licence", add("renew my driving licence")),
    P("I've got to fix the fence", add("fix the fence")),
    P("I must remember to water the plants", add("water the plants")),
    P("don't forget to buy a present for Sam", add("buy a present for Sam")),
    P("I should really book a dentist check-up", add("book a dentist check-up")),
    P("We need to buy a new sofa", add("buy a new sofa")),
    P("I need to pay the phone bill by Friday", add("pay the phone bill",
                                                     due_date=weekday("fri"))),
    P("gotta call the garage tomorrow", add("call the garage", due_date=days(1))),
    P("Don't let me forget to send the RSVP", add("send the RSVP")),
    P("I still need to wrap the presents", add("wrap the presents")),
    P("need to get the car serviced next week", add("get the car serviced",
                                                    due_date=next_week("mon"))),
    P("I want to read that book Lisa recommended", add("read that book Lisa recommended")),
    P("I need to cancel the gym membership, it's urgent",
      add("cancel the gym membership", priority="high")),
    # Completing, by inflected or partial words --------------------------------------------
    P("I've done the groceries", done(1)),
    P("groceries are done", done(1)),
    P("mark the grocery task as done", done(1)),
    P("the dentist one is done", done(2)),
    P("finished the dentist", done(2)),
    P("I walked the dog", done(3)),
    P("dog walk done", done(3)),
    P("I paid the electricity bill", done(4)),
    P("tick off the electricity bill", done(4)),
    P("I finished the report", done(6)),
    P("quarterly report is finished!", done(6)),
    P("task 7 done", done(7)),
    P("Mark #3 complete", done(3)),
    P("I booked the flights", done(7)),
    P("cross off the groceries", done(1)),
    P("completed the flight booking", done(7)),
    P("done with the electricity bill", done(4)),
    P("check off walking the dog", done(3)),
    # Deleting ----------------------------------------------------------------------------------
    P("delete the grocery task", delete(1)),
    P("remove the dentist one", delete(2)),
    P("cancel the flights", delete(7)),
    P("get rid of the dog walking task", delete(3)),
    P("scrap task 6", delete(6)),
    P("forget about the report", delete(6)),
    P("I don't need to book flights anymore", delete(7)),
    P("never mind the groceries", delete(1)),
    P("please drop the electricity bill task", delete(4)),
    P("delete number 2", delete(2)),
    # Changing: dates, priorities, titles ----------------------------------------------------
    P("move the dentist appointment to Friday", change(2, due_date=weekday("fri"))),
    P("push the report to next Monday", change(6, due_date=next_week("mon"))),
    P("postpone the groceries until tomorrow", change(1, due_date=days(1))),
    P("change the due date of task 7 to 3 March", change(7, due_date=on(3, 3))),
    P("reschedule the dentist to the 20th of May", change(2, due_date=on(20, 5))),
    P("the report is due on Thursday", change(6, due_date=weekday("thu"))),
    P("make the grocery task urgent", change(1, priority="high")),
    P("set task 3 to high priority", change(3, priority="high")),
    P("mark the flights as urgent", change(7, priority="high")),
    P("the electricity bill is low priority", change(4, priority="low")),
    P("change the priority of task 2 to low", change(2, priority="low")),
    P("rename the grocery task to buy groceries and wine",
      change(1, title="buy groceries and wine")),
    P("rename task 3 to walk the dog twice", change(3, title="walk the dog twice")),
    P('change "Call mum" to "Call mum and dad"', change(5, title="Call mum and dad")),
    P("update the description of the dentist task to bring the insurance card",
      change(2, description="bring the insurance card")),
    P("move the flights to next week", change(7, due_date=next_week("mon"))),
    P("bump the dog walk to tomorrow", change(3, due_date=days(1))),
    # Questions about tasks -----------------------------------------------------------------
    P("what's due this week?", listing(status="pending", due_before=END_OF_WEEK)),
    P("anything overdue?", listing(status="pending", due_before=YESTERDAY),
      says="Pay the electricity bill"),
    P("Is anything overdue?", listing(status="pending", due_before=YESTERDAY)),
    P("what am I behind on?", listing(status="pending", due_before=YESTERDAY)),
    P("how many tasks do I have left?", listing(status="pending"), says="6"),
    P("How many things are still to do?", listing(status="pending"), says="6"),
    P("what's due tomorrow?", listing(status="pending", due_before=days(1))),
    P("what do I need to do today?", listing(status="pending", due_before=days(0))),
    P("anything due by Friday?", listing(status="pending", due_before=weekday("fri"))),
    P("what's urgent?", listing(status="pending"), says="Pay the electricity bill"),
    P("any high priority tasks?", listing(status="pending"), says="Pay the electricity bill"),
    P("do I have anything about the dentist?", listing(q="dentist"), says="Dentist appointment"),
    P("find my tasks about flights", listing(q="flights"), says="Book flights to Lisbon"),
    P("what have I finished?", listing(status="completed"), says="Call mum"),
    P("how many tasks have I completed?", listing(status="completed"), says="1"),
    P("what's on my list?", listing(), says="Walk the dog"),
    P("what's left?", listing(status="pending")),
    P("what's still pending?", listing(status="pending")),
    P("Which tasks are overdue?", listing(status="pending", due_before=YESTERDAY)),
    P("any tasks due next week?", listing(status="pending", due_before=next_week("sun"))),
    # Listing ---------------------------------------------------------------------------------
    P("show my tasks", listing(status="all"), says="1. Buy groceries"),
    P("list everything", listing(status="all")),
    P("show me what's pending", listing(status="pending")),
    P("show completed tasks", listing(status="completed"), says="Call mum"),
    P("list my todos", listing(status="all")),
    P("show me my to-do list", listing()),
    P("show overdue tasks", listing(status="pending", due_before=YESTERDAY)),
    P("show urgent tasks", listing(status="pending"), says="Pay the electricity bill"),
    # Written after the agent, not tuned to it: 18 of these 25 passed at first ----------
    P("Could you put 'call the electrician' on my to-do list for Thursday?",
      add("call the electrician", due_date=weekday("thu"))),
    P("remind me on Friday to submit my timesheet",
      add("submit my timesheet", due_date=weekday("fri"))),
    P("add a task: buy a new phone charger", add("buy a new phone charger")),
    P("I gotta remember to pick up my prescription", add("pick up my prescription")),
    P("Please remind me to call the school tomorrow morning",
      add("call the school", due_date=days(1))),
    P("add get a haircut this weekend", add("get a haircut", due_date=END_OF_WEEK)),
    P("new todo - email the landlord about the boiler", add("email the landlord about the boiler")),
    P("add hoover the stairs and clean the bathroom to my list",
      add("hoover the stairs"), add("clean the bathroom")),
    P("got the groceries", done(1)),
    P("just paid the electricity bill", done(4)),
    P("the dog has been walked", done(3)),
    P("dentist: done", done(2)),
    P("can you mark the report as finished", done(6)),
    P("please delete the flights to Lisbon task", delete(7)),
    P("I won't be doing the groceries, remove it", delete(1)),
    P("can you move my dentist appointment to next Tuesday?", change(2, due_date=next_week("tue"))),
    P("the report can wait until next Friday", change(6, due_date=next_week("fri"))),
    P("make the dog walk a low priority", change(3, priority="low")),
    P("what's due today?", listing(status="pending", due_before=days(0))),
    P("what do I have on this week?", listing(status="pending", due_before=END_OF_WEEK)),
    P("have I got anything overdue?", listing(status="pending", due_before=YESTERDAY)),
    P("how many things have I got left to do?", listing(status="pending"), says="6"),
    P("what's next on my list?", listing()),
    P("is there anything urgent?", listing(status="pending"), says="Pay the electricity bill"),
    P("What did I get done?", listing(status="completed"), says="Call mum"),
    # A second batch written after the agent: 21 of these 25 passed at first ---------------------
    P("Add 'Send Mum flowers' for Sunday", add("Send Mum flowers", due_date=weekday("sun"))),
    P("pls add buy toothpaste", add("buy toothpaste")),
    P("ADD CALL THE BANK", add("CALL THE BANK")),
    P("add a todo to return the rental car by Thursday, it's important",
      add("return the rental car", due_date=weekday("thu"), priority="high")),
    P("remind me next Wednesday to phone the council", add("phone the council",
                                                           due_date=next_week("wed"))),
    P("I really need to sort out my pension", add("sort out my pension")),
    P("Need to book a table for Saturday", add("book a table", due_date=weekday("sat"))),
    P("add onions, garlic, and tomatoes", add("onions"), add("garlic"), add("tomatoes")),
    P("can you add these: call Sue; book the MOT; renew the TV licence",
      add("call Sue"), add("book the MOT"), add("renew the TV licence")),
    P("Groceries done ✅", done(1)),
    P("finally finished that quarterly report", done(6)),
    P("I've called mum", says="already"),
    P("tick the dentist off", done(2)),
    P("mark task 4 done", done(4)),
    P("remove 'Walk the dog'", delete(3)),
    P("delete the electricity one", delete(4)),
    P("take the flights off my list", delete(7)),
    P("change the dentist appointment to next Thursday", change(2, due_date=next_week("thu"))),
    P("push the report back a day", change(6, due_date=days(2))),
    P("rename 'Walk the dog' to 'Walk the dog in the park'",
      change(3, title="Walk the dog in the park")),
    P("set the report's due date to the 1st of May", change(6, due_date=on(1, 5))),
    P("What do I still have to do?", listing(status="pending")),
    P("what's overdue", listing(status="pending", due_before=YESTERDAY)),
    P("show me everything due by next Friday", listing(status="pending",
                                                        due_before=next_week("fri"))),
    P("Do I have any tasks about groceries?", listing(q="groceries"), says="Buy groceries"),
    # A third batch written after the agent: 13 of these 20 passed at first ----------------------
    P("Remind me to ring the GP surgery first thing tomorrow", add("ring the GP surgery",
                                                                   due_date=days(1))),
    P("stick 'renew parking permit' on the list", add("renew parking permit")),
    P("add to my list: defrost the freezer", add("defrost the freezer")),
    P("I'll need to get the boiler serviced before winter",
      add("get the boiler serviced before winter")),
    P("Can you make a note to call Aunt May on her birthday, 12 August",
      add("call Aunt May on her birthday", due_date=on(12, 8))),
    P("add 3 tasks - laundry, ironing, dishes", add("laundry"), add("ironing"), add("dishes")),
    P("bought the groceries", done(1)),
    P("that report is finally done", done(6)),
    P("I've sorted the electricity bill", done(4)),
    P("please complete the dog walking task", done(3)),
    P("get rid of task 7", delete(7)),
    P("I no longer need to walk the dog", delete(3)),
    P("can we move the report deadline to Monday?", change(6, due_date=weekday("mon"))),
    P("the flights aren't urgent any more", change(7, priority="normal")),
    P("change 'Buy groceries' so it's due Saturday", change(1, due_date=weekday("sat"))),
    P("what's on for tomorrow?", listing(status="pending", due_before=days(1))),
    P("how many overdue tasks have I got?", listing(status="pending", due_before=YESTERDAY),
      says="1"),
    P("list what I've done", listing(status="completed")),
    P("Give me my task list", listing()),
    P("Is the dentist on my list?", listing(), says="Dentist appointment"),
    # A fourth batch written after the agent: 14 of these 15 passed at first ---------------------
    P("Add 'Pick up Leo from football' every... no, just this Thursday",
      add("Pick up Leo from football", due_date=weekday("thu"))),
    P("remind me to email HR about my leave by end of the week",
      add("email HR about my leave", due_date=END_OF_WEEK)),
    P("I must call the insurance company on Monday morning",
      add("call the insurance company", due_date=weekday("mon"))),
    P("add a task for Tuesday: water the garden", add("water the garden",
                                                      due_date=weekday("tue"))),
    P("Add wrap presents and write cards to my list", add("wrap presents"), add("write cards")),
    P("walked the dog!", done(3)),
    P("Finished: quarterly report", done(6)),
    P("electricity bill paid", done(4)),
    P("I need to get the car washed", add("get the car washed")),
    P("please cancel my dentist appointment", delete(2)),
    P("drop task number 1", delete(1)),
    P("move task 6 to the day after tomorrow", change(6, due_date=days(2))),
    P("can you make the flights high priority", change(7, priority="high")),
    P("When is the dentist appointment due?", listing(), says="Dentist appointment"),
    P("what tasks are due this week?", listing(status="pending", due_before=END_OF_WEEK)),
    P("How many tasks are overdue?", listing(status="pending", due_before=YESTERDAY), says="1"),
    # Dates that do not exist, things it does not know ------------------------------------------
    P("add pay the deposit on 31 February", says=KIND_DATE),
    P("remind me to call Jo on 30 February", says=KIND_DATE),
    P("move the dentist to 31 April", says=KIND_DATE),
    P("add renew the lease by 2027-13-01", says=KIND_DATE),
    P("remove the unicorn task", says="couldn't find"),
    P("complete task 42", says="couldn't find"),
    P("delete the task", says="which task"),
    P("thanks!", says="welcome"),
    P("hello", says="I can manage your tasks"),
]  # fmt: skip

# Knowledge questions as people ask them: the answer must cite the passage and contain `says`.
KNOWLEDGE_DOCUMENTS = ["tea", "passwords", "marathon", "houseplants", "composting"]
KNOWLEDGE_PHRASINGS: list[Phrasing] = [
    P("How long do sessions last before they expire?", search(), says="3600 seconds"),
    P("when does a session expire?", search(), says="SESSION_TTL_SECONDS"),
    P("how hot should the water be for green tea?", search(), says="75 °C"),
    P("what temperature for green tea?", search(), says="75 °C"),
    P("how long should I train for a marathon?", search(), says="sixteen to twenty weeks"),
    P("how often should I water my houseplants?", search(), says="top two centimetres"),
    P("what should I protect my password vault with?", search(), says="passphrase"),
    P("What goes into a compost heap?", search(), says="green material"),
    P("how long does compost take?", search(), says="few months"),
    P("why do houseplants die?", search(), says="too much water"),
    P("explain how to set up a compost heap", search(), says="green material"),
    P("How do I make my password vault safer?", search(), says="passphrase"),
    P("tell me about training for a marathon", search(), says="ten percent"),
]
