"""Chinese postal addresses: a province or city with a road and house number (北京市朝阳区建国路88号), or an
estate with a block and room and no road (阳光花园3栋502). `weitiao.safety.pii.scan` runs `find_address`."""

from __future__ import annotations

import re

from weitiao.safety import pii_data as D
from weitiao.safety.pii_match import HAN, PRODUCT_LABEL, Match, _jieba_ok

_PROV = "|".join(sorted(D.PROVINCES, key=len, reverse=True))
NUM = r"[0-9一二三四五六七八九十百零]+"
ADDR_TAIL = (
    rf"(?:{HAN}{{1,5}}?(?:区|县|旗|市))?(?:{HAN}{{1,6}}?(?:街道|镇|乡))?"
    rf"(?:{HAN}|[0-9]){{1,8}}?(?:大道|路|街|道|巷|胡同|弄|里)(?:(?:[东西南北中一二三四五六七八九十]|[0-9]{{1,2}})段|[东西南北中]口)?{NUM}(?:号院|号|弄)"
    rf"(?:{HAN}{{0,6}}?(?:小区|大厦|花园|公寓|广场|中心))?(?:[0-9A-Za-z一二三四五六七八九十]+(?:号楼|栋|幢|座|单元|层|楼|室|号))*(?:[0-9]{{2,5}}室?)?"
)
# Cities (prefecture- and county-level) whose name is not two characters: after other Chinese text (寄给南京市…,
# 搬去了杭州市…) a city is read as the two characters before 市 unless it is one of these; at the start or after a
# mark, as two or three (请到长春市 is 长春市).
LONG_CITIES = (
    "乌鲁木齐 呼和浩特 齐齐哈尔 克拉玛依 鄂尔多斯 巴彦淖尔 乌兰察布 锡林浩特 二连浩特 霍林郭勒 额尔古纳 图木舒克 "
    "石家庄 哈尔滨 张家口 秦皇岛 连云港 马鞍山 景德镇 平顶山 驻马店 张家界 攀枝花 六盘水 嘉峪关 石嘴山 牡丹江 "
    "佳木斯 双鸭山 七台河 葫芦岛 日喀则 防城港 吐鲁番 阿拉尔 五家渠 满洲里 牙克石 扎兰屯 三门峡 "
    "乌兰浩特 五大连池 香格里拉 阿拉山口 丹江口 老河口 公主岭 梅河口 大石桥 瓦房店 井冈山 峨眉山 格尔木 德令哈 "
    "石河子 阿勒泰 阿尔山 绥芬河 调兵山 库尔勒 阿克苏 阿图什"
).split()
_LONG = "|".join(sorted(LONG_CITIES, key=len, reverse=True))
# Characters before 城市 that make it the word "city" (在城市, 们城市的), not the tail of a city's name (聊城市).
CITY_WORD_BEFORE = "这那哪每某该此本各整个座些大小的在到去从往住回进离说是了我你他她们和与跟"
# Words in 市 that name no city (公司上市后搬到了…, 楼下超市人民路…): no city name ends in these characters; 本市, 我市,
# 该市, 此市, 全市 and 城市 after one of those name the city the speaker means, not a city called 说本.
NOT_CITY = rf"(?!{HAN}{{0,3}}?(?:[超股夜菜集上黑早鱼闭休罢闹开本我该此全]市|[{CITY_WORD_BEFORE}]城市))"
ADDRESS_RE = re.compile(
    rf"(?:(?:{_PROV})(?:{HAN}{{2,4}}?(?:市|州|盟))?|(?<=[^\u4e00-\u9fa5]){NOT_CITY}(?:{_LONG}|{HAN}{{2,3}}?)市"
    rf"|^{NOT_CITY}(?:{_LONG}|{HAN}{{2,3}}?)市"  # 4 characters at the start: 请到|长春市, 快去|大连市
    rf"|(?<={HAN}){NOT_CITY}(?:{_LONG}|{HAN}{{2}})市)" + ADDR_TAIL
)
# Verbs after which an address follows (寄往成都市…, 送到宁波市…): a city there is preceded by Chinese text.
SHIP_VERBS = "寄往|寄到|寄至|邮寄到|邮寄至|送往|送到|送至|发往|发到|发至|运往|运到|快递到|搬到"
ADDRESS_CUED_RE = re.compile(
    rf"(?:地址|住址|住在|家住|位于|{SHIP_VERBS}|在)[:：\s]*({HAN}{{2,4}}?(?:市|区|县)" + ADDR_TAIL + ")"
)


# An address cue, then a road and number without a city (地址：解放路8号, 住在中山路5号); a bare 在 is no cue here
# (他在公司里5号开会).
ROAD_CUE = re.compile(rf"(?:地址|住址|住在|家住|位于|{SHIP_VERBS}|寄给)(?:[:：\s]|是|为)*")
ADDR_LEAD = re.compile(rf"^(?:住址|地址|住在|家住|位于|{SHIP_VERBS}|寄给|[我你他她们家在是到于往从去])+")
PROV_RE = re.compile(_PROV)
# "这个城市中山路5号", "本市中山路5号": 城市 after a demonstrative, measure word, 的, a preposition or pronoun or at the
# start, and 本市/我市/该市/此市/全市, are the word "city", not a city's name (聊城市, 海城市 are): the address starts
# after it.
GENERIC_CITY = re.compile(
    r"(?:(?:[这那哪每某该此本各整][个座些]?|[一两几][个座]|[个座些大小的])城市|(?:(?<![\u4e00-\u9fa5])|"
    rf"(?<=[{CITY_WORD_BEFORE}]))城市|[本我该此全]市)(?:的|里的?)?"
)
TAIL_RE = re.compile(ADDR_TAIL)
# Words for roads in general, not a road's name: 城市道路12号令 is a regulation.
ROAD_NOUN = re.compile(r"(?:道路|马路|公路|铁路|线路|街道|轨道|通道|车道)")


def _after_generic_city(text: str, start: int, end: int) -> int:
    """Where the address in text[start:end] begins once a leading 这个城市 / 那座城市的 is left out, and the words
    between it and the road (这个城市后住在|中山路5号)."""
    for g in GENERIC_CITY.finditer(text, max(0, start - 3), min(end, start + 9)):
        if g.start() <= start < g.end():
            road = ROAD_RE.match(text, g.end(), end)
            return _estate_start(text, g.end(), road.end(1)) if road else g.end()
    return start


ROAD_RE = re.compile(rf"(?:{HAN}|[0-9]){{1,8}}?()(?:大道|路|街|道|巷|胡同|弄|里)")


# A home without its road (住在阳光花园3栋502, 万科城12-3-401, 金地中心A座1205): a building and a room number are
# an address on their own. Read when a block (栋/幢/号楼/座) is followed by a room, or when an estate suffix is
# followed by block-unit-room written with dashes; the estate name is the up to 8 Chinese characters before it.
ROOM_RE = re.compile(
    r"(?<![0-9A-Za-z])(?:\d{1,2}期)?(?:[0-9A-Za-z]{1,3}|[一二三四五六七八九十]{1,3})(?:号楼|栋|幢|座)"
    r"(?:[0-9一二三四五六七八九十]{1,2}单元)?\d{3,4}(?:-\d{3,4})?(?:室|房|号)?(?![0-9A-Za-z])"  # A座1205-1207
)
ESTATE = "花园|小区|大厦|公寓|广场|中心|大楼|家园|新村|山庄|华庭|公馆|天地|天街|国际|城|苑|府|园|庭|邸|湾|院"
DASH_ROOM_RE = re.compile(rf"(?:{ESTATE})((?:\d{{1,2}}期)?\d{{1,3}}(?:-\d{{1,2}})?-\d{{3,4}})(?![0-9A-Za-z-])")
# A block without a room is an address only right after an estate's name (住在阳光花园3栋, 万科城12栋); a Chinese
# numeral only before 号楼 (阳光花园三号楼): 花园一座假山, 三栋别墅 count things.
BLOCK_RE = re.compile(
    rf"(?:{ESTATE})((?:\d{{1,2}}期)?(?:[0-9A-Za-z]{{1,3}}(?:号楼|栋|幢|座)|[一二三四五六七八九十]{{1,3}}号楼)"
    r"(?:[0-9一二三四五六七八九十]{1,2}单元)?)(?![0-9A-Za-z])"
)
NOT_ESTATE = set("在住到是于的往去从和与给向寄送发搬我你他她们了")


PLACE_VERBS = frozenset(
    "放 送 寄 交 到 住 在 去 来 搬 找 回 带 拿 停 存 见 约 进 存放 放在 放到 送到 寄到 搬到 交给 搬进 住进 住在".split()
)
# Without jieba: words that end the text before a name (快递放|翠湖天地, 城市后住在|中山路, 新开的|中山路). Only verbs
# of placing and going that rarely sit inside a name: 来 (来福士广场) and 回 (回龙观) are left to jieba.
LEAD_WORDS = re.compile(
    "存放|放在|放到|送到|寄到|搬到|搬进|住进|住在|交给|已经|现在|之后|以后|然后|我们|你们|他们|她们|咱们|"
    "[放送寄住到去搬进的了在于往从和与给向把是就也还说我你他她]"
)


def _estate_start(text: str, start: int, room: int) -> int:
    """Where the name before `room` (an estate's, a road's) begins in text[start:room]: after the last preposition,
    pronoun, adverb, 的/了, or verb of placing or going that jieba finds there (快递放|翠湖天地, 城市后住在|中山路);
    without jieba, after the last of `LEAD_WORDS`. Other verbs stay, as names hold them (华润|置|地|广场, 解放路),
    and so does the word that ends at `room`."""
    if start == room:
        return start
    if not _jieba_ok():
        return max([start] + [m.end() for m in LEAD_WORDS.finditer(text, start, room) if m.end() < room])
    import jieba.posseg as pseg

    pos = cut = max(0, start - 4)  # a few characters of context: 金|地 alone is cut as a name and a particle
    for w, flag in pseg.cut(text[pos:room]):
        pos += len(w)
        lead = flag[:1] in ("p", "r", "c", "d") or w in PLACE_VERBS or w in ("的", "之", "了")  # not 地 (置|地|广场)
        if lead and pos < room:
            cut = pos
    return max(cut, start)


def _name_before(text: str, room: int) -> int:
    """Where the estate name before `room` begins: up to 8 Chinese characters back, cut as `_estate_start` cuts."""
    start = room
    while start > max(0, room - 8) and re.fullmatch(HAN, text[start - 1]) and text[start - 1] not in NOT_ESTATE:
        start -= 1
    if 0 < start < room and _jieba_ok():  # the stop may open the name's first word: 住在|向阳小区, not 向|阳小区
        import jieba

        pos = max(0, start - 4)
        for w in jieba.cut(text[pos : start + 4]):
            if pos < start < pos + len(w):
                return _estate_start(text, pos, room)
            pos += len(w)
    return _estate_start(text, start, room)


def find_building(text: str) -> list[Match]:
    """A block and room number with the estate name before it, or a block alone right after an estate's name; no road
    or city needed."""
    out = []
    rooms = [m.span() for m in ROOM_RE.finditer(text)] + [m.span(1) for m in DASH_ROOM_RE.finditer(text)]
    for room, end in rooms:
        if PRODUCT_LABEL.search(text[max(0, room - 12) : room]):
            continue  # 型号A座1205: a product code
        start = _name_before(text, room)
        out.append(Match("address", start, end, text[start:end], 0.8 if start < room else 0.6))
    for m in BLOCK_RE.finditer(text):  # 阳光花园3栋: the name must hold more than its suffix (我们小区3栋楼 is none)
        block, end = m.span(1)
        start = _name_before(text, block)
        if block - start > m.start(1) - m.start():
            out.append(Match("address", start, end, text[start:end], 0.7))
    return out


# A bare 在 before a road and house number (我在中山路5号等你): an address only for a road proper (路, 街, 大道, 巷,
# 胡同) named by two or more Chinese characters (5路3号车 is a bus) and no road noun (高速公路5号出口); 里 and 道
# also end other words (他在公司里5号开会, 在通道3号口).
BARE_AT_ROADS = ("路", "街", "大道", "巷", "胡同")


def _after_bare_at(text: str) -> list[Match]:
    out = []
    for at in re.finditer("在", text):
        tail = TAIL_RE.match(text, at.end())
        road = tail and ROAD_RE.match(text, at.end(), tail.end())
        if not road or not text.startswith(BARE_AT_ROADS, road.end(1)) or ROAD_NOUN.search(text, at.end(), road.end()):
            continue
        start = _after_generic_city(text, at.end(), tail.end())  # 在这个城市|中山路5号
        if start == at.end():
            start = _estate_start(text, start, road.end(1))
        if len(re.findall(HAN, text[start : road.end(1)])) >= 2:
            out.append(Match("address", start, tail.end(), text[start : tail.end()], 0.7))
    return out


def find_address(text: str) -> list[Match]:
    out = find_building(text) + _after_bare_at(text)
    for g in GENERIC_CITY.finditer(text):  # 本市中山路5号, 城市中山路5号: no city name, the road and number alone
        if (tail := TAIL_RE.match(text, g.end())) and not ROAD_NOUN.match(text, g.end()):
            start = _after_generic_city(text, g.start(), tail.end())
            out.append(Match("address", start, tail.end(), text[start : tail.end()], 0.8))
    for c in ROAD_CUE.finditer(text):
        if (tail := TAIL_RE.match(text, c.end())) and not ROAD_NOUN.match(text, c.end()):
            start = _after_generic_city(text, c.end(), tail.end())  # 住址：本市|中山路5号
            if start == c.end() and (road := ROAD_RE.match(text, start, tail.end())):
                start = _estate_start(text, start, road.end(1))
            out.append(Match("address", start, tail.end(), text[start : tail.end()], 0.75))
    for m in ADDRESS_RE.finditer(text):
        s, start = m.group(), m.start()
        cut = PROV_RE.search(s[:6])  # "住在北京市..." matched as a 4-character "city": start at the province
        # (only there, and only before the city's 市: 山东 in 石家庄市长安区中山东路1号 cut the address to 山东路1号,
        # 北京 in 广州市北京路8号 to 北京路8号)
        cut = cut if cut and ("市" not in s[: cut.start()]) else None
        cut = cut.start() if cut else ADDR_LEAD.match(s).end() if ADDR_LEAD.match(s) else 0
        start = _after_generic_city(text, start + cut, m.end())
        out.append(Match("address", start, m.end(), text[start : m.end()], 0.85))
    for m in ADDRESS_CUED_RE.finditer(text):  # 地址是深圳市…: the lazy city took 是深圳
        lead = ADDR_LEAD.match(m.group(1))
        start = _after_generic_city(text, m.start(1) + (lead.end() if lead else 0), m.end(1))
        out.append(Match("address", start, m.end(1), text[start : m.end(1)], 0.8))
    return out
